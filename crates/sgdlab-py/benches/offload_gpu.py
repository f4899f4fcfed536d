"""FSDP2 with CPUOffloadPolicy on a GPU: the forward and backward run on the GPU, the
optimizer step on the host shards through sgdlab's Rust kernels. One process (NCCL), so it
runs on a machine with one GPU; without one it runs the same on the CPU (gloo, no pinned
memory), as a check of the script:

    torchrun --nproc_per_node 1 crates/sgdlab-py/benches/offload_gpu.py [--params 100000000]

Checks that sgdlab.torch.AdamW steps with the Rust engine and equals torch.optim.AdamW under
the same run (float32), then times one offloaded optimizer step of each (median of rounds,
interleaved) with the host threads torch uses.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

import sgdlab
import sgdlab.torch as st


CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def model(width: int, depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    m = torch.nn.Sequential(*layers).to(DEVICE)
    policy = CPUOffloadPolicy(pin_memory=CUDA)
    for layer in m:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, offload_policy=policy)
    fully_shard(m, offload_policy=policy)
    return m


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=100_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    dist.init_process_group("nccl" if CUDA else "gloo")
    if CUDA:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    depth = 8
    width = int((a.params / depth) ** 0.5)
    x = torch.randn(64, width, device=DEVICE)
    runs = {}
    for name, make in (
        ("sgdlab.torch.AdamW", lambda ps: st.AdamW(ps, lr=1e-4, weight_decay=0.01, check_finite=False)),
        ("torch.optim.AdamW", lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01)),
        ("torch.optim.AdamW fused", lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, fused=True)),
    ):
        m = model(width, depth)
        opt = make(m.parameters())
        times = []
        for t in range(a.rounds):
            opt.zero_grad()
            m(x).square().mean().backward()
            sync()
            start = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - start)
        params = [p.full_tensor().detach().float().cpu() for p in m.parameters()]
        runs[name] = (params, statistics.median(times[2:]), getattr(opt, "implementation", None))
        print(f"{name:28s} step {runs[name][1] * 1e3:8.2f} ms  engine {runs[name][2]}", flush=True)
        del m, opt
    ref = runs["torch.optim.AdamW"][0]
    diff = max(float((p - q).abs().max() / q.abs().max()) for p, q in zip(runs["sgdlab.torch.AdamW"][0], ref))
    n = sum(p.numel() for p in ref)
    where = torch.cuda.get_device_name() if CUDA else "the CPU"
    print(f"{n:,} parameters on {where}, host threads {torch.get_num_threads()} "
          f"(sgdlab {sgdlab.get_num_threads()}); sgdlab vs torch.optim.AdamW: max relative difference {diff:.2e}")
    assert runs["sgdlab.torch.AdamW"][2] == "rust", "the offloaded step did not run on the Rust kernels"
    assert diff < 1e-5, diff
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
