#!/usr/bin/env python3
"""Compare sgdlab's Prodigy with the authors' package (`prodigyopt.Prodigy`) on the CPU.

A model of `--tensors` equal float32 tensors (`--params` in all) with fixed gradients; each
round steps, in a shuffled order: `sgdlab bench --serve` (the Rust step, timed inside sgdlab),
`sgdlab.torch.Prodigy` (the same Rust step through the torch.optim class) and
`prodigyopt.Prodigy` (per-tensor torch operations and two `.item()` per tensor), all with
`--threads` threads. Ratios are taken within rounds, as in `bench/compare_torch.py`. Not part
of CI; needs torch, prodigyopt and the sgdlab package:

    python3 bench/compare_prodigy.py [--params 10000000] [--tensors 200] [--rounds 20]
        [--threads 2] [--sgdlab target/release/sgdlab]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_new import compare  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402


def model(params, tensors):
    gen = torch.Generator().manual_seed(0)
    n = params // tensors
    ps = [torch.nn.Parameter(torch.randn(n, generator=gen) * 1e-2) for _ in range(tensors)]
    for p in ps:
        p.grad = torch.randn(n, generator=gen) * 1e-3
    return ps


def stepper(opt):
    def step():
        opt.step()

    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--tensors", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--sgdlab", default="target/release/sgdlab")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import prodigyopt
    import sgdlab
    import sgdlab.torch as st

    sgdlab.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, prodigyopt 1.1.2, {args.tensors} tensors")
    theirs = {
        "prodigyopt.Prodigy": stepper(prodigyopt.Prodigy(model(args.params, args.tensors))),
        "sgdlab.torch.Prodigy (rust engine)": stepper(st.Prodigy(model(args.params, args.tensors))),
    }
    compare(
        f"Prodigy, {args.tensors} tensors",
        args.sgdlab,
        args.params,
        args.threads,
        args.rounds,
        ["prodigy", "prodigy:check_finite=false"],
        theirs,
        "prodigyopt.Prodigy",
        tensors=args.tensors,
    )


if __name__ == "__main__":
    main()
