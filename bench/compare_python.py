#!/usr/bin/env python3
"""The Python package's speed: sgdlab.torch.Adam/AdamW against torch.optim.Adam(W)(fused=True)
and DeepSpeed's DeepSpeedCPUAdam (the CPU step of ZeRO-Offload), and sgdlab.Optimizer.step
on numpy arrays against the same step in the CLI's `bench --serve`.

    python bench/compare_python.py [--params 10000000] [--tensors 200] [--rounds 40]
        [--threads 2] [--sgdlab target/release/sgdlab] [--no-serve]

DeepSpeedCPUAdam is measured when deepspeed is installed (`pip install deepspeed ninja`, the
environment's bin/ on PATH for ninja; DS_ACCELERATOR=cpu on a machine without a GPU); its
first construction compiles the op (minutes). A mixed-precision section steps bfloat16
parameters and gradients with a float32 master copy (sgdlab's `master_weights=True`) against
DeepSpeedCPUAdam on the float32 master (from the bfloat16 gradients widened) with the
bfloat16 copy written back, as DeepSpeed's mixed-precision offload does.

Needs the package installed (scripts/test does it into .venv) and torch. Every round times
one step of each contender back to back, in a new random order, each on its own data; the
figures are medians over rounds of the per-round ratios (neighbouring steps see the same
machine). Three layouts:

* one tensor of PARAMS float32 parameters (also with bfloat16 moments, `state_dtype="bf16"`:
  20 bytes per parameter instead of 28);
* TENSORS tensors of mixed sizes (log-uniform, a model's parameter list), PARAMS in all —
  where the per-tensor cost of crossing from Python shows;
* numpy: sgdlab.Optimizer.step on one array vs `sgdlab bench --serve` (the Rust step with no
  Python in between; timed inside that process, so the Python call is counted against us).

Not part of CI (timings on a shared machine); the README quotes its output.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sgdlab  # noqa: E402
import sgdlab.torch as st  # noqa: E402


def sizes(total: int, count: int, seed: int = 0) -> list[int]:
    """`count` log-uniform tensor sizes (1 .. total/8) summing to `total`."""
    rng = random.Random(seed)
    raw = [10 ** rng.uniform(0, np.log10(total / 8)) for _ in range(count)]
    scale = total / sum(raw)
    out = [max(1, int(r * scale)) for r in raw]
    out[-1] += total - sum(out)
    return out


def model(shape_sizes: list[int], seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for n in shape_sizes:
        p = torch.nn.Parameter(torch.randn(n, generator=g) * 1e-3)
        p.grad = torch.randn(n, generator=g) * 1e-6
        params.append(p)
    return params


def timed(step) -> float:
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


class Serve:
    """`sgdlab bench --serve`: one step per request, timed inside that process."""

    def __init__(self, binary: str, params: int, threads: int, spec: str) -> None:
        cmd = [binary, "--threads", str(threads), "bench", "--serve", "--params", str(params), "--opt", spec]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            sys.exit(f"{binary} bench --serve did not start")

    def step(self) -> float:
        self.proc.stdin.write("0\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def rounds(contenders: dict, n: int, warmup: int = 3) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(n + warmup):
        random.shuffle(names)
        for k in names:
            t = contenders[k]()
            if r >= warmup:
                times[k].append(t)
    return times


def report(title: str, times: dict[str, list[float]], base: str, params: int) -> None:
    print(f"\n{title}")
    for k, ts in times.items():
        med = statistics.median(ts)
        ratio = statistics.median(b / t for b, t in zip(times[base], ts))
        print(f"  {k:48s} {med * 1e3:8.2f} ms  {params / med / 1e9:6.2f} Gparam/s  "
              f"speed vs {base}: {ratio:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--tensors", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--sgdlab", default="target/release/sgdlab")
    ap.add_argument("--no-serve", action="store_true", help="skip the numpy-against-CLI section")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, sgdlab {sgdlab.__version__}, {a.params:,} float32 "
          f"parameters, {a.threads} threads, {a.rounds} rounds")

    sgdlab.set_num_threads(a.threads)
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception as e:  # noqa: BLE001 - any failure to import or build: not measured
        print(f"(DeepSpeedCPUAdam not measured: {type(e).__name__}: {e})")
        DeepSpeedCPUAdam = None

    for layout, shape_sizes in (("one tensor", [a.params]), (f"{a.tensors} tensors", sizes(a.params, a.tensors))):
        for name, decoupled in (("Adam", False), ("AdamW", True)):
            contenders = {}
            ref = f"torch {name} fused"
            torch_cls, st_cls = (torch.optim.AdamW, st.AdamW) if decoupled else (torch.optim.Adam, st.Adam)
            o = torch_cls(model(shape_sizes, 1), lr=1e-3, fused=True)
            contenders[ref] = lambda o=o: timed(o.step)
            if DeepSpeedCPUAdam is not None:
                o = DeepSpeedCPUAdam(model(shape_sizes, 5), lr=1e-3, adamw_mode=decoupled, weight_decay=0.01 if decoupled else 0.0)
                contenders["DeepSpeedCPUAdam"] = lambda o=o: timed(o.step)
            o = st_cls(model(shape_sizes, 2), lr=1e-3, check_finite=False)
            contenders[f"sgdlab.torch.{name} check_finite=False"] = lambda o=o: timed(o.step)
            o = st_cls(model(shape_sizes, 3), lr=1e-3)
            contenders[f"sgdlab.torch.{name} (checked)"] = lambda o=o: timed(o.step)
            o = st_cls(model(shape_sizes, 4), lr=1e-3, check_finite=False, state_dtype="bf16")
            contenders[f"sgdlab.torch.{name} bf16 state, unchecked"] = lambda o=o: timed(o.step)
            report(f"{name}, {layout}:", rounds(contenders, a.rounds), ref, a.params)
            del contenders, o

    # Mixed precision: bfloat16 parameters and gradients, float32 master weights and moments.
    contenders = {}
    ps = model([a.params], 6)
    low = [torch.nn.Parameter(p.detach().bfloat16()) for p in ps]
    for p, q in zip(low, ps):
        p.grad = q.grad.bfloat16()
    o = st.AdamW(low, lr=1e-3, check_finite=False, master_weights=True)
    o.step()  # the master copy is made at the first step
    base = "sgdlab.torch.AdamW bf16 params, master_weights"
    contenders[base] = lambda o=o: timed(o.step)
    if DeepSpeedCPUAdam is not None:
        master = model([a.params], 7)
        copies = [torch.zeros(a.params, dtype=torch.bfloat16)]
        o2 = DeepSpeedCPUAdam(master, lr=1e-3, adamw_mode=True, weight_decay=0.01)

        def ds_mixed(o2=o2, master=master, copies=copies):
            # DeepSpeed's offload hands the CPU step float32 gradients (converted from the
            # bfloat16 ones) and writes the bfloat16 copy back: both counted here.
            t = time.perf_counter()
            master[0].grad.copy_(low[0].grad)
            o2.step()
            copies[0].copy_(master[0].detach())
            return time.perf_counter() - t

        contenders["DeepSpeedCPUAdam fp32 master + bf16 copy"] = ds_mixed
    report("AdamW, mixed precision (bf16 params and grads, f32 master), one tensor:", rounds(contenders, a.rounds), base, a.params)
    del contenders, o

    if a.no_serve:
        return
    spec = "adam:check_finite=false"
    serve = Serve(a.sgdlab, a.params, a.threads, spec)
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(a.params, dtype=np.float32) * 1e-3)
    g = (rng.standard_normal(a.params, dtype=np.float32) * 1e-6)
    opt = sgdlab.Optimizer(spec)
    contenders = {
        "sgdlab bench --serve (Rust, no Python)": serve.step,
        "sgdlab.Optimizer.step (numpy)": lambda: timed(lambda: opt.step([w], [g])),
    }
    report(f"{spec}, one array:", rounds(contenders, a.rounds), "sgdlab bench --serve (Rust, no Python)", a.params)
    serve.close()


if __name__ == "__main__":
    main()
