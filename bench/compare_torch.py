#!/usr/bin/env python3
"""Compare sgdlab's Adam step with PyTorch's fused/foreach Adam and optax's jitted Adam.

Runs sgdlab's Adam and, for whichever of torch and optax are installed, the same step on the
same number of f32 parameters with the same thread count, then prints each figure and its
ratio to sgdlab's. Not part of CI.

    python3 bench/compare_torch.py [--params 10000000] [--threads 2] [--rounds 100]
        [--all] [--bf16] [--q8] [--opt SPEC ...] [--foreach] [--sgdlab target/release/sgdlab]

With --q8, sgdlab's Adam with 8-bit moments (both roundings) runs beside torchao's AdamW8bit
and bitsandbytes' Adam8bit on the CPU, where they are installed (16 B/param each).

sgdlab runs as `sgdlab bench --serve`, which steps on request, so that every round times
one step of each implementation back to back (in a new random order each round, each on
its own data):
neighbouring steps see the same machine, and the ratios are taken within rounds. torch runs
with OMP_WAIT_POLICY=PASSIVE (unless set), so that its idle threads do not spin on the cores
the next step needs. sgdlab's steps are timed inside the process; the others'
from Python, which adds the call overhead (tens of microseconds) to theirs.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import time


def torch_adam(params, threads):
    """Step closures for PyTorch's fused and foreach Adam, if torch is installed."""
    # libgomp's threads otherwise spin for a while after each parallel region, on the cores
    # that the next implementation's step then runs on.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    out = {}
    for mode in ("fused", "foreach"):
        p = torch.nn.Parameter(torch.randn(params, dtype=torch.float32) * 1e-3)
        p.grad = torch.randn(params, dtype=torch.float32) * 1e-6
        try:
            opt = torch.optim.Adam([p], lr=1e-3, **{mode: True})
        except (RuntimeError, TypeError) as e:  # fused on CPU needs torch >= 2.4
            print(f"torch {mode} Adam unavailable: {e}", file=sys.stderr)
            continue
        out[f"torch {torch.__version__} Adam {mode}"] = opt.step
        if mode == "fused":
            # PyTorch's own NaN/Inf-safe step, as torch.amp.GradScaler does it: a separate
            # pass over g (which also rescales it in place, here by 1) sets found_inf, and
            # the step is skipped if it is set. Compare with sgdlab's default, checked step.
            found_inf = torch.zeros(1)
            inv_scale = torch.ones(1)

            def checked(p=p, opt=opt, found_inf=found_inf, inv_scale=inv_scale):
                found_inf.zero_()
                torch._amp_foreach_non_finite_check_and_unscale_([p.grad], found_inf, inv_scale)
                if not found_inf.item():
                    opt.step()

            out[f"torch {torch.__version__} Adam fused + GradScaler check"] = checked
    return out


def eight_bit_adams(params):
    """Step closures for torchao's AdamW8bit and bitsandbytes' Adam8bit (block size 256,
    weight decay 0, as sgdlab's `adam:state_dtype=q8`), where installed."""
    try:
        import torch
    except ImportError:
        return {}
    out = {}
    makers = []
    try:
        from torchao.optim import AdamW8bit
        import torchao
        makers.append((f"torchao {torchao.__version__} AdamW8bit",
                       lambda ps: AdamW8bit(ps, lr=1e-3, weight_decay=0.0, block_size=256)))
    except ImportError as e:
        print(f"torchao unavailable: {e}", file=sys.stderr)
    try:
        import bitsandbytes as bnb
        makers.append((f"bitsandbytes {bnb.__version__} Adam8bit (CPU)",
                       lambda ps: bnb.optim.Adam8bit(ps, lr=1e-3, min_8bit_size=0)))
    except ImportError as e:
        print(f"bitsandbytes unavailable: {e}", file=sys.stderr)
    for name, make in makers:
        p = torch.nn.Parameter(torch.randn(params, dtype=torch.float32) * 1e-3)
        p.grad = torch.randn(params, dtype=torch.float32) * 1e-6
        try:
            out[name] = make([p]).step
        except Exception as e:  # noqa: BLE001 - a backend that refuses the CPU is skipped
            print(f"{name} unavailable: {e}", file=sys.stderr)
    return out


def optax_adam(params):
    """A step closure for optax's jitted Adam, if jax and optax are installed."""
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return {}
    opt = optax.adam(1e-3)
    p = jnp.zeros((params,), jnp.float32) + 1e-3
    g = jnp.zeros((params,), jnp.float32) + 1e-6
    state = opt.init(p)

    @jax.jit
    def step(p, state):
        updates, state = opt.update(g, state, p)
        return optax.apply_updates(p, updates), state

    holder = {"p": p, "state": state}

    def run():
        holder["p"], holder["state"] = step(holder["p"], holder["state"])
        holder["p"].block_until_ready()

    return {f"optax {optax.__version__} adam (jit)": run}


class Sgdlab:
    """`sgdlab bench --serve`: one step of the K-th optimizer per request, timed inside."""

    def __init__(self, binary, params, threads, specs, tensors=1):
        cmd = [binary, "--threads", str(threads), "bench", "--serve", "--params", str(params),
               "--tensors", str(tensors)]
        for spec in specs:
            cmd += ["--opt", spec]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            sys.exit(f"{binary} bench --serve did not start")

    def step(self, k):
        self.proc.stdin.write(f"{k}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            sys.exit("sgdlab bench --serve stopped")
        return float(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def timed(step):
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def quartiles(xs):
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


# sgdlab optimizers timed by default, and with --all; bytes moved per f32 parameter.
ADAM = ["adam", "adam:check_finite=false"]
ALL = ADAM + [f"{spec}{sep}check_finite=false" if unchecked else spec
              for spec, sep in [("adamw", ":"), ("sgd:momentum=0.9", ","), ("rmsprop", ":"),
                                ("lion", ":")]
              for unchecked in (False, True)]


# With --bf16: Adam with bfloat16 moments (20 B/param), stochastic rounding and nearest.
BF16 = ["adam:check_finite=false,state_dtype=bf16",
        "adam:check_finite=false,state_dtype=bf16,rounding=nearest"]


# With --q8: Adam with 8-bit moments (16 B/param), stochastic rounding and nearest.
Q8 = ["adam:check_finite=false,state_dtype=q8",
      "adam:check_finite=false,state_dtype=q8,rounding=nearest"]


def bytes_per_param(spec):
    """Bytes moved per f32 parameter: p and g read and written/read (8 + 4), each state
    buffer read and written at its own width (8-bit state's scales left out)."""
    slots = {"adam": 2, "adamw": 2, "sgd": 1, "rmsprop": 1, "lion": 1}.get(
        spec.split(":")[0].split(",")[0], 2)
    width = 2 if "state_dtype=bf16" in spec else 1 if "state_dtype=q8" in spec else 4
    return 12 + 2 * width * slots


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=100,
                    help="rounds; each times one step of every implementation, back to back")
    ap.add_argument("--all", action="store_true",
                    help="also time sgdlab's adamw, sgd with momentum, rmsprop and lion")
    ap.add_argument("--bf16", action="store_true",
                    help="also time sgdlab's Adam with bfloat16 moments (both roundings)")
    ap.add_argument("--q8", action="store_true",
                    help="also time sgdlab's Adam with 8-bit moments and torchao's and "
                         "bitsandbytes' 8-bit Adams")
    ap.add_argument("--opt", action="append", default=[], metavar="SPEC",
                    help="also time this sgdlab spec (repeatable)")
    ap.add_argument("--foreach", action="store_true", help="also time torch's (slow) foreach Adam")
    ap.add_argument("--sgdlab", default="target/release/sgdlab")
    args = ap.parse_args()

    specs = (ALL if args.all else ADAM) + (BF16 if args.bf16 else []) + (Q8 if args.q8 else []) + args.opt
    ours = Sgdlab(args.sgdlab, args.params, args.threads, specs)
    steps = {f"sgdlab {spec}": (lambda k=k: ours.step(k)) for k, spec in enumerate(specs)}
    moved = {f"sgdlab {spec}": bytes_per_param(spec) * args.params for spec in specs}
    others = torch_adam(args.params, args.threads)
    if not args.foreach:
        others = {k: v for k, v in others.items() if "foreach" not in k}
    others.update(optax_adam(args.params))
    eight = eight_bit_adams(args.params) if args.q8 else {}
    others.update(eight)
    steps.update({name: (lambda step=step: timed(step)) for name, step in others.items()})
    moved.update({name: (16 if name in eight else 28) * args.params for name in others})

    for step in steps.values():   # warm-up: allocate state, fault pages in
        for _ in range(3):
            step()
    times = {name: [] for name in steps}
    order = list(steps)
    shuffle = random.Random(0).shuffle
    for _ in range(args.rounds):
        # A new order every round, so that no implementation always follows the same one
        # (another runtime's threads may still be busy for a moment after its step).
        shuffle(order)
        for name in order:
            times[name].append(steps[name]())
    ours.close()

    # Throughput ratios are taken step by step within a round, so that the drift of a shared
    # machine's bandwidth, which neighbouring steps share, cancels out.
    base = next((n for n in steps if "fused" in n), "sgdlab adam:check_finite=false")
    print(f"{args.params} f32 parameters, {args.threads} threads, {args.rounds} rounds of one "
          "step each, interleaved; sgdlab's specs without check_finite=false check g for "
          "NaN/Inf first (one more read of g, not counted in B/param)")
    print(f"{'implementation':60} {'ms/step':>8} {'B/param':>7} {'GB/s':>6}   "
          f"GB/s / {base} GB/s: median [quartiles]   speed (its time / this time)")
    for name, secs in times.items():
        lo, mid, hi = quartiles([(moved[name] / s) / (moved[base] / b)
                                 for s, b in zip(secs, times[base])])
        slo, smid, shi = quartiles([b / s for s, b in zip(secs, times[base])])
        med = statistics.median(secs)
        print(f"{name:60} {med * 1e3:8.3f} {moved[name] // args.params:7} "
              f"{moved[name] / med / 1e9:6.1f}   {mid:5.2f}x [{lo:.2f}, {hi:.2f}]"
              f"   {smid:5.2f}x [{slo:.2f}, {shi:.2f}]")
    if not others:
        print("(neither torch nor optax is installed: pip install torch / optax jax to compare)")


if __name__ == "__main__":
    main()
