#!/usr/bin/env python3
"""Compare sgdlab's AdEMAMix, Schedule-Free AdamW and Muon with the fastest PyTorch way to run each.

* AdEMAMix: no fused kernel exists; PyTorch's fastest is the `torch._foreach_*` sequence of
  the paper's code (fast EMA, slow EMA, second moment, one update), here on one tensor.
* Schedule-Free AdamW: the `schedulefree` package's `AdamWScheduleFree(foreach=True)`.
* Muon: `torch.optim.Muon` on CPU (its Newton–Schulz runs in bfloat16: on CPUs without
  native bf16 that is very slow, so only at 1024×1024) and the same step with the
  Newton–Schulz in float32 (1024×1024 and 4096×4096), against sgdlab's `muon` (f32) and
  `muon:ns_bf16=true`.

Steps are interleaved round by round with `sgdlab bench --serve` (timed inside sgdlab; the
others from Python) and ratios are taken within rounds, as in `bench/compare_torch.py`. Not
part of CI; needs torch and schedulefree:

    python3 bench/compare_new.py [--params 10000000] [--rounds 30] [--muon-rounds 5]
        [--threads 2] [--skip-4096] [--sgdlab target/release/sgdlab]
"""

import argparse
import math
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_torch import Sgdlab, quartiles, timed  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402


def foreach_ademamix(n, lr=1e-3, b1=0.9, b2=0.999, b3=0.9999, alpha=5.0, eps=1e-8):
    p = [torch.randn(n) * 1e-3]
    g = [torch.randn(n) * 1e-6]
    m1, m2, nu = ([torch.zeros(n)] for _ in range(3))
    state = {"t": 0}

    def step():
        with torch.no_grad():
            state["t"] += 1
            t = state["t"]
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            torch._foreach_lerp_(m1, g, 1 - b1)
            torch._foreach_lerp_(m2, g, 1 - b3)
            torch._foreach_mul_(nu, b2)
            torch._foreach_addcmul_(nu, g, g, 1 - b2)
            denom = torch._foreach_sqrt(nu)
            torch._foreach_div_(denom, math.sqrt(bc2))
            torch._foreach_add_(denom, eps)
            upd = torch._foreach_div(m1, bc1)
            torch._foreach_add_(upd, m2, alpha=alpha)
            torch._foreach_div_(upd, denom)
            torch._foreach_add_(p, upd, alpha=-lr)

    return step


def schedulefree_adamw(n):
    import schedulefree

    p = torch.nn.Parameter(torch.randn(n) * 1e-3)
    p.grad = torch.randn(n) * 1e-6
    opt = schedulefree.AdamWScheduleFree([p], lr=2.5e-3, foreach=True)
    opt.train()
    return opt.step, f"schedulefree {schedulefree.__version__ if hasattr(schedulefree, '__version__') else ''} AdamWScheduleFree foreach".replace("  ", " ")


def torch_muon(side):
    p = torch.nn.Parameter(torch.randn(side, side) * 1e-2)
    p.grad = torch.randn(side, side) * 1e-3
    opt = torch.optim.Muon([p], lr=0.02)
    return opt.step


def torch_muon_f32(side, lr=0.02, momentum=0.95, wd=0.1, steps=5, eps=1e-7):
    """torch.optim.Muon's step with its Newton–Schulz in float32 (PyTorch hard-codes bfloat16,
    which CPUs without native bf16 run slowly): the best a CPU user of torch can do."""
    from torch.optim._muon import DEFAULT_A as a, DEFAULT_B as b, DEFAULT_C as c

    p = torch.randn(side, side) * 1e-2
    g = torch.randn(side, side) * 1e-3
    buf = torch.zeros_like(p)

    def step():
        with torch.no_grad():
            buf.lerp_(g, 1 - momentum)
            x = g.lerp(buf, momentum)
            x = x / x.norm().clamp(min=eps)
            for _ in range(steps):
                gram = x @ x.T
                upd = torch.addmm(gram, gram, gram, beta=b, alpha=c)
                x = torch.addmm(x, upd, x, beta=a)
            p.mul_(1 - lr * wd)
            p.add_(x, alpha=-lr)

    return step


def compare(title, binary, params, threads, rounds, ours, theirs, base, tensors=1):
    """Interleaves sgdlab's `ours` specs (on `tensors` equal tensors) with `theirs` {name:
    step}; prints ratios to `base`."""
    sg = Sgdlab(binary, params, threads, ours, tensors)
    steps = {f"sgdlab {spec}": (lambda k=k: sg.step(k)) for k, spec in enumerate(ours)}
    steps.update({name: (lambda s=s: timed(s)) for name, s in theirs.items()})
    for s in steps.values():
        s()
    times = {name: [] for name in steps}
    order = list(steps)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            times[name].append(steps[name]())
    sg.close()
    print(f"\n{title}: {params} f32 parameters, {threads} threads, {rounds} interleaved rounds")
    print(f"{'implementation':56} {'ms/step':>9}   {base} time / this time: median [quartiles]")
    for name, secs in times.items():
        lo, mid, hi = quartiles([b / s for s, b in zip(secs, times[base])])
        print(f"{name:56} {statistics.median(secs) * 1e3:9.2f}   {mid:5.2f}x [{lo:.2f}, {hi:.2f}]")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--muon-rounds", type=int, default=5)
    ap.add_argument("--skip-4096", action="store_true")
    ap.add_argument("--only-muon", action="store_true")
    ap.add_argument("--sgdlab", default="target/release/sgdlab")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}")

    n = args.params
    if args.only_muon:
        return muon(args)
    compare("AdEMAMix", args.sgdlab, n, args.threads, args.rounds,
            ["ademamix", "ademamix:check_finite=false"],
            {"torch _foreach_* AdEMAMix (paper's code)": foreach_ademamix(n)},
            "torch _foreach_* AdEMAMix (paper's code)")
    step, name = schedulefree_adamw(n)
    compare("Schedule-Free AdamW", args.sgdlab, n, args.threads, args.rounds,
            ["sf-adamw", "sf-adamw:check_finite=false"], {name: step}, name)
    muon(args)


def muon(args):
    f32 = "torch Muon step, Newton–Schulz in f32 (patched)"
    for side in [1024] + ([] if args.skip_4096 else [4096]):
        theirs = {f32: torch_muon_f32(side)}
        if side <= 1024:
            # bf16 on a CPU without native bf16: 27 s per 1024² step here, so not at 4096².
            theirs["torch.optim.Muon (CPU, bf16 Newton–Schulz)"] = torch_muon(side)
        compare(f"Muon {side}x{side}", args.sgdlab, side * side, args.threads, args.muon_rounds,
                ["muon:lr=0.02", "muon:lr=0.02,ns_bf16=true"], theirs, f32)


if __name__ == "__main__":
    main()
