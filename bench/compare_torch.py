#!/usr/bin/env python3
"""Compare sgdlab's Adam step with PyTorch's fused/foreach Adam and optax's jitted Adam.

Runs `sgdlab bench --json` and, for whichever of torch and optax are installed, the same
step on the same number of f32 parameters with the same thread count, then prints each
figure and its ratio to sgdlab's. Not part of CI.

    python3 bench/compare_torch.py [--params 10000000] [--threads 2] [--reps 10]
        [--rounds 7] [--sgdlab target/release/sgdlab]

Each round runs `sgdlab bench` once and then every other implementation, back to back; the
speed-ups are medians of the per-round ratios.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def median_seconds(step, reps):
    for _ in range(3):
        step()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def torch_adam(params, threads):
    """Step closures for PyTorch's fused and foreach Adam, if torch is installed."""
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


def sgdlab_adam(binary, params, threads, reps):
    """Median seconds per step of sgdlab's Adam, with and without the NaN/Inf check."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        subprocess.run(
            [binary, "--threads", str(threads), "bench", "--params", str(params),
             "--reps", str(reps), "--opt", "adam", "--opt", "adam:check_finite=false",
             "--json", path],
            check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            ours = json.load(f)
    return {
        "sgdlab adam (NaN/Inf check, default)": ours["results"][0]["ms_per_step"] / 1e3,
        "sgdlab adam:check_finite=false": ours["results"][1]["ms_per_step"] / 1e3,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=7,
                    help="rounds; each times every implementation once, back to back")
    ap.add_argument("--sgdlab", default="target/release/sgdlab")
    args = ap.parse_args()

    others = torch_adam(args.params, args.threads)
    others.update(optax_adam(args.params))
    times = {}   # name -> per-round median seconds
    for _ in range(args.rounds):
        for name, secs in sgdlab_adam(args.sgdlab, args.params, args.threads, args.reps).items():
            times.setdefault(name, []).append(secs)
        for name, step in others.items():
            times.setdefault(name, []).append(median_seconds(step, args.reps))

    # The speed-up is the median over rounds of each round's ratio, so that the drift of a
    # shared machine's bandwidth, which both sides of a round share, cancels out.
    base = "sgdlab adam:check_finite=false"
    bytes_moved = 28 * args.params
    print(f"{args.params} f32 parameters, {args.threads} threads, {args.rounds} rounds "
          f"of {args.reps} steps each")
    print(f"{'implementation':40} {'ms/step':>9} {'GB/s@28B':>9} "
          f"{'sgdlab (no check) speed-up: median [min, max] over rounds':>20}")
    for name, secs in times.items():
        ratios = sorted(s / b for s, b in zip(secs, times[base]))
        med = statistics.median(secs)
        print(f"{name:40} {med * 1e3:9.3f} {bytes_moved / med / 1e9:9.1f} "
              f"{statistics.median(ratios):8.2f}x [{ratios[0]:.2f}, {ratios[-1]:.2f}]")
    if not others:
        print("(neither torch nor optax is installed: pip install torch / optax jax to compare)")


if __name__ == "__main__":
    main()
