"""One optimizer step of ``sgdlab.torch`` against ``torch.optim`` on one device, interleaved.

    python crates/sgdlab-py/benches/bench_torch.py --device cuda --params 10M --params 100M

For each size (split into ``--tensors`` tensors of equal size), times one step of:

* ``torch.optim.AdamW`` with ``fused=True`` (the reference, ratio 1) and ``foreach=True``;
* ``sgdlab.torch.AdamW``: its torch engine eagerly (``implementation="torch"``, unchecked as
  torch is: ``check_finite=False``; through torch's fused Adam kernel, and with the
  ``_foreach`` operations alone), checked (``check_finite=True``: one host synchronisation per
  step), the same steps under ``torch.compile``, and on CPU tensors the Rust kernels;

and with ``--muon``, ``torch.optim.Muon`` against sgdlab's Muon (torch engine) on
``--muon-shape`` matrices. Each candidate runs in turn, round after round (interleaved, so
that a change of clock or a neighbour's load hits all of them alike); a step is timed with
CUDA events on a GPU, ``time.perf_counter`` on the CPU. Prints one JSON object: the median
milliseconds per step and each candidate's ratio to the reference's median (speed: above 1
is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

import sgdlab.torch as st
from sgdlab import _foreach


def count(text: str) -> int:
    """``10M`` → 10_000_000."""
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}
    return int(float(text[:-1]) * scale[text[-1].upper()]) if text[-1].upper() in scale else int(text)


def timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """Milliseconds of one call of ``fn``."""
    if device.type == "cuda":

        def cuda_time(fn: Callable[[], None]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return cuda_time

    def wall_time(fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return wall_time


def candidates_adamw(n: int, tensors: int, device: torch.device, compile_: bool):
    """(name, step) pairs over parameters of n elements in `tensors` tensors, each candidate
    with its own copy of the parameters and gradients."""
    size = n // tensors
    gen = torch.Generator(device="cpu").manual_seed(0)
    init = torch.randn(size, generator=gen)

    def params():
        ps = [torch.nn.Parameter(init.to(device).clone()) for _ in range(tensors)]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        return ps

    out = [
        ("torch.optim.AdamW(fused=True)", torch.optim.AdamW(params(), lr=1e-3, fused=True).step),
        ("torch.optim.AdamW(foreach=True)", torch.optim.AdamW(params(), lr=1e-3, foreach=True).step),
    ]
    eager = st.AdamW(params(), lr=1e-3, implementation="torch", check_finite=False)
    out.append(("sgdlab.torch.AdamW (torch engine, eager)", eager.step))
    foreach = st.AdamW(params(), lr=1e-3, implementation="torch", check_finite=False)

    def foreach_step() -> None:
        _foreach.FUSED = False
        try:
            foreach.step()
        finally:
            _foreach.FUSED = True

    out.append(("sgdlab.torch.AdamW (torch engine, _foreach ops only)", foreach_step))
    checked = st.AdamW(params(), lr=1e-3, implementation="torch")
    out.append(("sgdlab.torch.AdamW (torch engine, check_finite=True)", checked.step))
    if compile_:
        compiled = st.AdamW(params(), lr=1e-3, implementation="torch", check_finite=False)
        out.append(("sgdlab.torch.AdamW (torch engine, torch.compile)", torch.compile(compiled.step)))
    if device.type == "cpu":
        rust = st.AdamW(params(), lr=1e-3, implementation="rust", check_finite=False)
        out.append(("sgdlab.torch.AdamW (Rust kernels)", rust.step))
    return out


def candidates_muon(shape: tuple[int, int], count_: int, device: torch.device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    init = [torch.randn(shape, generator=gen) * 0.02 for _ in range(count_)]

    def params():
        ps = [torch.nn.Parameter(x.to(device).clone()) for x in init]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        return ps

    out = []
    if hasattr(torch.optim, "Muon"):
        out.append(("torch.optim.Muon", torch.optim.Muon(params(), lr=1e-3).step))
    for bf16 in (False, True):
        opt = st.Optimizer(params(), spec=f"muon:lr=1e-3,ns_bf16={'true' if bf16 else 'false'}", check_finite=False)
        out.append((f"sgdlab muon (torch engine{', ns_bf16' if bf16 else ''})", opt.step))
    return out


def measure(cands, clock, warmup: int, rounds: int) -> dict[str, object]:
    for _, step in cands:
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name, _ in cands}
    for _ in range(rounds):
        for name, step in cands:
            times[name].append(clock(step))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ref = medians[cands[0][0]]
    return {
        "reference": cands[0][0],
        "median_ms": medians,
        "speed_vs_reference": {name: ref / ms for name, ms in medians.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--params", action="append", help="sizes, e.g. 10M (repeatable)")
    ap.add_argument("--tensors", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--muon", action="store_true")
    ap.add_argument("--muon-shape", default="4096x1024")
    ap.add_argument("--muon-count", type=int, default=8)
    args = ap.parse_args()
    device = torch.device(args.device)
    clock = timer(device)
    report: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "adamw": {},
    }
    for text in args.params or ["10M"]:
        n = count(text)
        cands = candidates_adamw(n, args.tensors, device, not args.no_compile)
        report["adamw"][text] = measure(cands, clock, args.warmup, args.rounds)  # type: ignore[index]
        print(json.dumps({text: report["adamw"][text]}), flush=True)  # type: ignore[index]
        del cands
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.muon:
        rows, cols = (int(x) for x in args.muon_shape.split("x"))
        cands = candidates_muon((rows, cols), args.muon_count, device)
        report["muon"] = {args.muon_shape: measure(cands, clock, args.warmup, args.rounds)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
