"""One process of a 2-process ``torch.distributed`` run (gloo, CPU), started by
``test_distributed.py``: ``python distributed_worker.py SCENARIO OUT_DIR`` with ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. Rank 0 writes what it measured to
``OUT_DIR/SCENARIO.json`` (and tensors to ``.pt`` files) for the test to check."""

from __future__ import annotations

import gc
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

import sgdlab.torch as st

STEPS = 6


def mlp() -> torch.nn.Module:
    """The 3-layer MLP of every scenario, in float64, the same on every process. Its last
    layer has one output: sharded over 2 processes, its weight and bias leave process 1 an
    empty shard."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 9), torch.nn.Tanh(), torch.nn.Linear(9, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1)
    ).double()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """The full batch (8 examples); each of the 2 processes takes half."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 1, generator=g, dtype=torch.float64)


def half(t: torch.Tensor) -> torch.Tensor:
    r = dist.get_rank()
    return t[4 * r : 4 * r + 4]


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
    return ((model(x) - y) ** 2).mean() * (1 + 0.3 * math.sin(t))


def full(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if isinstance(p, DTensor) else p.detach()


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [full(p).detach().clone() for p in model.parameters()]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b))


def shard(model: torch.nn.Module, offload: bool) -> torch.nn.Module:
    kw = {"offload_policy": CPUOffloadPolicy(pin_memory=False)} if offload else {}
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, **kw)
    fully_shard(model, **kw)
    return model


def train(model, opt, steps, start=0, clip=None, nan_at=None):
    x, y = data()
    x, y = half(x), half(y)
    for t in range(start, start + steps):
        opt.zero_grad()
        loss_of(model, x, y, t).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if nan_at == t and dist.get_rank() == 0:
            g = model[0].weight.grad
            (g._local_tensor if isinstance(g, DTensor) else g).view(-1)[1] = float("nan")
        opt.step()


# -- scenarios ------------------------------------------------------------------------------


def ddp(out: Path) -> dict:
    """DDP with sgdlab.torch.AdamW, and a clipped sgdlab spec: the parameters after STEPS."""
    res = {}
    for name, make in {
        "adamw": lambda ps: st.AdamW(ps, lr=0.01, weight_decay=0.1),
        "clipped": lambda ps: st.Optimizer(ps, "adamw:lr=0.01", clip_norm=0.05),
    }.items():
        model = DDP(mlp())
        train(model, make(model.parameters()), STEPS)
        res[name] = params(model.module)
    if dist.get_rank() == 0:
        torch.save(res, out / "ddp.pt")
    return {}


def fsdp(out: Path, offload: bool, implementation: str) -> dict:
    """FSDP2 (fully_shard on each Linear and the root; CPU offload or not): sgdlab.torch
    against torch.optim under the same run; a non-finite gradient on one process; Muon
    refused."""
    res: dict = {}
    kw = {"implementation": implementation}
    pairs = {
        "adamw": (lambda ps: st.AdamW(ps, lr=0.01, weight_decay=0.1, **kw), lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1), None),
        "clipped": (
            lambda ps: st.Optimizer(ps, "adamw:lr=0.01,weight_decay=0.1", clip_norm=0.05, **kw),
            lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
            0.05,
        ),
        "sgd": (
            lambda ps: st.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, **kw),
            lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
            None,
        ),
    }
    for name, (mine, theirs, clip) in pairs.items():
        a, b = shard(mlp(), offload), shard(mlp(), offload)
        oa, ob = mine(a.parameters()), theirs(b.parameters())
        train(a, oa, STEPS)
        train(b, ob, STEPS, clip=clip)
        res[f"{name}_diff"] = max_diff(params(a), params(b))
        res[f"{name}_engine"] = oa.implementation
        res[f"{name}_local"] = list(a[0].weight.to_local().shape)
        res[f"{name}_last"] = list(a[4].weight.to_local().shape)
    # A NaN in one process's shard: every process skips (skip_nonfinite), or refuses.
    m = shard(mlp(), offload)
    opt = st.AdamW(m.parameters(), lr=0.01, skip_nonfinite=True, **kw)
    train(m, opt, 2)
    before = params(m)
    train(m, opt, 1, start=2, nan_at=2)
    counts = [None, None]
    dist.all_gather_object(counts, (opt.steps, opt.skipped, max_diff(before, params(m))))
    res["skip"] = counts
    m = shard(mlp(), offload)
    opt = st.AdamW(m.parameters(), lr=0.01, **kw)
    try:
        train(m, opt, 1, nan_at=0)
        message = None
    except Exception as e:  # noqa: BLE001 - the message is the result
        message = f"{type(e).__name__}: {e}"
    messages = [None, None]
    dist.all_gather_object(messages, message)
    res["refused"] = messages
    try:
        m = shard(mlp(), offload)
        train(m, st.Optimizer(m.parameters(), "muon:lr=0.01"), 1)
        res["muon"] = None
    except ValueError as e:
        res["muon"] = str(e)
    return res


def hsdp(out: Path) -> dict:
    """FSDP2 on a 2-D mesh (HSDP: replicate × shard, 1 × 2): the parameters are
    (Replicate, Shard(0)) DTensors; the sums run over the shard dimension only. sgdlab's
    clipped AdamW against torch.optim's with clip_grad_norm_."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("replicate", "shard"))

    def sharded() -> torch.nn.Module:
        m = mlp()
        for layer in m:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(m, mesh=mesh)
        return m

    a, b = sharded(), sharded()
    oa = st.Optimizer(a.parameters(), "adamw:lr=0.01,weight_decay=0.1", clip_norm=0.05)
    ob = torch.optim.AdamW(b.parameters(), lr=0.01, weight_decay=0.1)
    train(a, oa, STEPS)
    train(b, ob, STEPS, clip=0.05)
    return {
        "placements": [type(pl).__name__ for pl in a[0].weight.placements],
        "diff": max_diff(params(a), params(b)),
        "engine": oa.implementation,
    }


def zero(out: Path) -> dict:
    """ZeroRedundancyOptimizer over sgdlab.torch.AdamW (and a clipped spec summing its norm
    over the partitions), and its checkpoint: a resumed run equals the uninterrupted one."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    res: dict = {}
    saved = {}
    for name, cls, kw in (
        ("adamw", st.AdamW, dict(lr=0.01, weight_decay=0.1)),
        ("clipped", st.Optimizer, dict(spec="adamw:lr=0.01", clip_norm=0.05, shard_group=dist.group.WORLD)),
    ):
        model = DDP(mlp())
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, **kw)
        train(model, opt, STEPS)
        saved[name] = params(model.module)
    # The checkpoint: 3 steps, consolidate, save, 3 more; a fresh run loads and takes 3.
    model = DDP(mlp())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=st.AdamW, lr=0.01, weight_decay=0.1)
    train(model, opt, 3)
    opt.consolidate_state_dict(to=0)
    if dist.get_rank() == 0:
        torch.save({"model": model.module.state_dict(), "opt": opt.state_dict()}, out / "zero_ckpt.pt")
    dist.barrier()
    train(model, opt, 3, start=3)
    ckpt = torch.load(out / "zero_ckpt.pt", weights_only=False)
    model2 = mlp()
    model2.load_state_dict(ckpt["model"])
    model2 = DDP(model2)
    opt2 = ZeroRedundancyOptimizer(model2.parameters(), optimizer_class=st.AdamW, lr=0.5, weight_decay=0.1)
    opt2.load_state_dict(ckpt["opt"])
    train(model2, opt2, 3, start=3)
    res["resume_equal"] = all(torch.equal(a, b) for a, b in zip(params(model.module), params(model2.module)))
    res["resume_engine"] = opt2.optim.implementation
    res["resume_steps"] = opt2.optim.steps
    # A NaN in one parameter's (all-reduced) gradient lies in one process's partition: with
    # shard_group, both processes skip the step.
    model3 = DDP(mlp())
    opt3 = ZeroRedundancyOptimizer(
        model3.parameters(), optimizer_class=st.AdamW, lr=0.01, skip_nonfinite=True, shard_group=dist.group.WORLD
    )
    train(model3, opt3, 2)
    x, y = data()
    opt3.zero_grad()
    loss_of(model3, half(x), half(y), 2).backward()
    next(model3.parameters()).grad.view(-1)[0] = float("nan")
    opt3.step()
    counts = [None, None]
    dist.all_gather_object(counts, (opt3.optim.steps, opt3.optim.skipped))
    res["skip"] = counts
    if dist.get_rank() == 0:
        torch.save(saved, out / "zero.pt")
    return res


def dcp(out: Path) -> dict:
    """torch.distributed.checkpoint of an FSDP2 model and its sgdlab optimizer: a resumed run
    equals the uninterrupted one, bit for bit; taking the state dict steps nothing."""
    import torch.distributed.checkpoint as dcp_
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    res: dict = {}
    for spec in ("adamw:lr=0.01,weight_decay=0.1", "nadam:lr=0.01", "sf-adamw:lr=0.01,warmup_steps=2"):
        rule = spec.split(":")[0]
        model = shard(mlp(), False)
        opt = st.Optimizer(model.parameters(), spec)
        train(model, opt, 3)
        opt.zero_grad(set_to_none=True)
        steps = opt.steps
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
        res[f"{rule}_no_phantom_step"] = opt.steps == steps
        where = out / f"dcp-{rule}"
        dcp_.save(state, checkpoint_id=str(where))
        train(model, opt, 3, start=3)
        model2 = shard(mlp(), False)
        opt2 = st.Optimizer(model2.parameters(), spec.replace("lr=0.01", "lr=0.3"))
        state2 = {"model": get_model_state_dict(model2), "optim": get_optimizer_state_dict(model2, opt2)}
        dcp_.load(state2, checkpoint_id=str(where))
        set_model_state_dict(model2, state2["model"])
        set_optimizer_state_dict(model2, opt2, state2["optim"])
        res[f"{rule}_engine"] = opt2.implementation
        res[f"{rule}_steps"] = opt2.steps
        train(model2, opt2, 3, start=3)
        res[f"{rule}_equal"] = all(torch.equal(a, b) for a, b in zip(params(model), params(model2)))
    return res


def deepspeed_zero2(out: Path) -> dict:
    """DeepSpeed ZeRO stage 2 with the optimizer offloaded to the CPU and sgdlab.torch.AdamW
    as the client optimizer (zero_force_ds_cpu_optimizer: false): it steps each process's
    flat float32 partition on the host, through the Rust kernels. Also the same run with
    torch.optim.AdamW as the client, to compare with."""
    import deepspeed

    config = {
        "train_micro_batch_size_per_gpu": 4,
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
    }
    res: dict = {}
    saved = {}
    for name, make in (
        ("sgdlab", lambda ps: st.AdamW(ps, lr=0.01, weight_decay=0.1)),
        ("torch", lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    ):
        model = mlp().float()
        opt = make(model.parameters())
        engine, zero_opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        x, y = data()
        x, y = half(x).float(), half(y).float()
        for t in range(STEPS):
            engine.backward(loss_of(engine, x, y, t))
            engine.step()
        saved[name] = [p.detach().clone() for p in model.parameters()]
        res[f"{name}_wrapper"] = type(zero_opt).__name__
        if name == "sgdlab":
            res["engine"], res["steps"] = opt.implementation, opt.steps
            res["flat"] = [list(p.shape) for g in opt.param_groups for p in g["params"]]
    if dist.get_rank() == 0:
        torch.save(saved, out / "deepspeed.pt")
    return res


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    if scenario == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo")
    try:
        if scenario == "ddp":
            res = ddp(out)
        elif scenario.startswith("fsdp"):
            _, offload, implementation = scenario.split("-")
            res = fsdp(out, offload == "offload", implementation)
        elif scenario == "zero":
            res = zero(out)
        elif scenario == "hsdp":
            res = hsdp(out)
        elif scenario == "dcp":
            res = dcp(out)
        elif scenario == "deepspeed":
            res = deepspeed_zero2(out)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
        if dist.get_rank() == 0:
            (out / f"{scenario}.json").write_text(json.dumps(res))
        # Every DDP model and ZeRO optimizer (held in reference cycles) is freed while the
        # process group lives, and both processes leave together: gloo aborts a process
        # whose peer closes first, or whose wrappers are freed after the group.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
