#!/usr/bin/env python3
"""Compare sgdlab's Adam step with PyTorch's fused/foreach Adam and optax's jitted Adam.

Runs `sgdlab bench --json` and, for whichever of torch and optax are installed, the same
step on the same number of f32 parameters with the same thread count, then prints each
figure and its ratio to sgdlab's. All measurements are taken in one run, one after the
other, so the ratios are comparable even on a noisy machine. Not part of CI.

    python3 bench/compare_torch.py [--params 10000000] [--threads 2] [--reps 20]
        [--sgdlab target/release/sgdlab]
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


def torch_adam(params, threads, reps):
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    out = {}
    for mode in ("fused", "foreach"):
        p = torch.nn.Parameter(torch.randn(params, dtype=torch.float32) * 1e-3)
        p.grad = torch.randn(params, dtype=torch.float32) * 1e-6
        kwargs = {mode: True}
        try:
            opt = torch.optim.Adam([p], lr=1e-3, **kwargs)
        except (RuntimeError, TypeError) as e:  # fused on CPU needs torch >= 2.4
            print(f"torch {mode} Adam unavailable: {e}", file=sys.stderr)
            continue
        out[f"torch {torch.__version__} Adam {mode}"] = median_seconds(opt.step, reps)
    return out


def optax_adam(params, reps):
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

    return {f"optax {optax.__version__} adam (jit)": median_seconds(run, reps)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sgdlab", default="target/release/sgdlab")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        subprocess.run(
            [args.sgdlab, "--threads", str(args.threads), "bench", "--params", str(args.params),
             "--reps", str(args.reps), "--opt", "adam", "--opt", "adam:check_finite=false",
             "--json", path],
            check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            ours = json.load(f)
    sgdlab_s = ours["results"][0]["ms_per_step"] / 1e3
    # sgdlab checks every gradient for NaN/Inf by default (one more read of g); PyTorch does
    # not, so the like-for-like figure is the unchecked one.
    rows = {
        "sgdlab adam (NaN/Inf check, default)": sgdlab_s,
        "sgdlab adam:check_finite=false": ours["results"][1]["ms_per_step"] / 1e3,
    }
    rows.update(torch_adam(args.params, args.threads, args.reps))
    rows.update(optax_adam(args.params, args.reps))

    bytes_moved = 28 * args.params
    print(f"{args.params} f32 parameters, {args.threads} threads; "
          f"read-modify-write bandwidth {ours['bandwidth_gbps']:.1f} GB/s")
    print(f"{'implementation':40} {'ms/step':>9} {'GB/s@28B':>9} {'sgdlab speed-up':>16}")
    for name, secs in rows.items():
        print(f"{name:40} {secs * 1e3:9.3f} {bytes_moved / secs / 1e9:9.1f} {secs / sgdlab_s:15.2f}x")
    if len(rows) == 2:
        print("(neither torch nor optax is installed: pip install torch / optax jax to compare)")


if __name__ == "__main__":
    main()
