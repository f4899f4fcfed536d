#!/usr/bin/env python3
"""Compare sgdlab's SOAP with pytorch-optimizer's (`pytorch_optimizer.SOAP` 4.1.0) on the CPU.

One float32 matrix per shape (default 1024×1024 and 4096×1024, both sides rotated) with a
fixed gradient. The first step (which computes both eigendecompositions) is timed once for
each; then each round runs `--frequency` steps of each implementation in a shuffled order
(so every round contains one refresh of the eigenbases by power iteration and QR), and
ratios are taken within rounds. sgdlab runs through `sgdlab.torch.SOAP` on its Rust engine
(the parameters are viewed, not copied). Both use `--threads` threads. Not part of CI; needs
torch, pytorch-optimizer and the sgdlab package:

    python3 bench/compare_soap.py [--shapes 1024x1024 4096x1024] [--rounds 3] [--threads 2]
"""

import argparse
import os
import random
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_torch import quartiles  # noqa: E402


def problem(rows, cols, seed):
    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(rows, cols, generator=gen) * 1e-2)
    p.grad = torch.randn(rows, cols, generator=gen) * 1e-3
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1024x1024", "4096x1024"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frequency", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import pytorch_optimizer
    import sgdlab
    import sgdlab.torch as st

    sgdlab.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, pytorch-optimizer 4.1.0, {args.threads} threads")
    for shape in args.shapes:
        rows, cols = map(int, shape.split("x"))
        kw = dict(precondition_frequency=args.frequency)
        opts = {
            "sgdlab.torch.SOAP (rust engine)": st.SOAP([problem(rows, cols, 0)], implementation="rust", **kw),
            "pytorch_optimizer.SOAP": pytorch_optimizer.SOAP([problem(rows, cols, 0)], **kw),
        }
        first = {}
        for name, opt in opts.items():
            start = time.perf_counter()
            opt.step()  # the statistics and the eigendecompositions
            first[name] = time.perf_counter() - start
        times = {name: [] for name in opts}
        order = list(opts)
        for _ in range(args.rounds):
            random.Random(len(times[order[0]])).shuffle(order)
            for name in order:
                start = time.perf_counter()
                for _ in range(args.frequency):
                    opts[name].step()
                times[name].append((time.perf_counter() - start) / args.frequency)
        base = "pytorch_optimizer.SOAP"
        print(f"\nSOAP {rows}x{cols}: first step (eigendecompositions), then {args.rounds} rounds of "
              f"{args.frequency} steps (one power iteration and QR each)")
        print(f"{'implementation':36} {'first step s':>12} {'ms/step':>9}   {base} time / this time: median [quartiles]")
        for name, secs in times.items():
            lo, mid, hi = quartiles([b / s for s, b in zip(secs, times[base])]) if len(secs) > 1 else (0, times[base][0] / secs[0], 0)
            print(f"{name:36} {first[name]:12.2f} {statistics.median(secs) * 1e3:9.1f}   {mid:5.2f}x [{lo:.2f}, {hi:.2f}]")


if __name__ == "__main__":
    main()
