"""sgdlab.torch under torch.distributed: 2 processes on the CPU (gloo), each run by
``distributed_worker.py``; DDP, FSDP2 (with and without CPU offload, both engines), ZeRO and
distributed checkpoints, each against the single-process run or ``torch.optim`` in the same
run."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sgdlab.torch as st

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as w  # noqa: E402

WORKER = Path(__file__).parent / "distributed_worker.py"


def launch(scenario: str, out: Path, **extra_env: str) -> dict:
    """Runs ``scenario`` in 2 processes; what rank 0 measured."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
            **extra_env,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), scenario, str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (p, text) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} of {scenario} failed:\n{text[-4000:]}"
    return json.loads((out / f"{scenario}.json").read_text())


def single(make, steps=w.STEPS, dtype=torch.float64) -> list[torch.Tensor]:
    """The single-process run on the full batch."""
    model = w.mlp().to(dtype)
    opt = make(model.parameters())
    x, y = (t.to(dtype) for t in w.data())
    for t in range(steps):
        opt.zero_grad()
        w.loss_of(model, x, y, t).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def assert_single_process_runs(got: dict) -> None:
    """The distributed runs of AdamW and a clipped spec (``ddp`` and ``zero``) equal the
    single-process runs on the full batch (float64)."""
    want = {
        "adamw": single(lambda ps: st.AdamW(ps, lr=0.01, weight_decay=0.1)),
        "clipped": single(lambda ps: st.Optimizer(ps, "adamw:lr=0.01", clip_norm=0.05)),
    }
    for name in want:
        assert w.max_diff(got[name], want[name]) <= 1e-13, name


def test_ddp_equals_the_single_process_run(tmp_path):
    """DDP averages the two halves' gradients (f64 all-reduce): the run equals the
    single-process full-batch run to within that sum's rounding (measured ≤ 1e-15)."""
    launch("ddp", tmp_path)
    got = torch.load(tmp_path / "ddp.pt")
    assert_single_process_runs(got)


@pytest.mark.parametrize("offload", ["none", "offload"])
@pytest.mark.parametrize("implementation", ["rust", "torch"])
def test_fsdp2_equals_torch_optim_on_the_shards(tmp_path, offload, implementation):
    """FSDP2 with every Linear and the root sharded over 2 processes (empty shards on process
    1 included): sgdlab.torch steps each process's local shard as torch.optim steps the
    DTensors, clipping by the norm summed over the processes; a NaN in one process's shard
    skips (or refuses) the step on both; Muon refuses a shard."""
    scenario = f"fsdp-{offload}-{implementation}"
    res = launch(scenario, tmp_path)
    for name in ("adamw", "clipped", "sgd"):
        assert res[f"{name}_engine"] == implementation, name
        assert res[f"{name}_diff"] <= 1e-13, (name, res[f"{name}_diff"])
    assert res["adamw_local"] == [5, 5]  # rank 0's shard of the 9×5 weight
    assert res["adamw_last"] == [1, 7]  # rank 0 holds the 1×7 weight; rank 1's shard is empty
    # Both processes skipped the step with the NaN (rank 0's), and changed nothing.
    assert res["skip"] == [[2, 1, 0.0], [2, 1, 0.0]]
    rank0, rank1 = res["refused"]
    assert "non-finite value nan in gradient of" in rank0.lower() and "index 1" in rank0
    assert "other part(s) of the model (another process)" in rank1
    assert "muon orthogonalises each whole matrix" in res["muon"] and "shard" in res["muon"]


def test_hsdp_sums_over_the_shard_dimension_only(tmp_path):
    """FSDP2 on a 2-D mesh (replicate × shard): the parameters are (Replicate, Shard(0))
    DTensors, and the clipped step equals torch.optim's with clip_grad_norm_."""
    res = launch("hsdp", tmp_path)
    assert res["placements"] == ["Replicate", "Shard"]
    assert res["engine"] == "rust"
    assert res["diff"] <= 1e-13, res["diff"]


def test_zero_redundancy_optimizer_equals_the_single_process_run(tmp_path):
    """ZeroRedundancyOptimizer(optimizer_class=sgdlab.torch.AdamW) equals the single-process
    run; with clip_norm and shard_group the norm is the whole model's, and a NaN in one
    process's partition skips the step on both; its consolidated checkpoint resumes bit for
    bit (onto the Rust engine)."""
    res = launch("zero", tmp_path)
    got = torch.load(tmp_path / "zero.pt")
    assert_single_process_runs(got)
    assert {k: res[k] for k in ("resume_equal", "resume_engine", "resume_steps")} == {
        "resume_equal": True,
        "resume_engine": "rust",
        "resume_steps": 6,
    }
    # A NaN in one partition: with shard_group both processes skip (2 steps, 1 skipped).
    assert res["skip"] == [[2, 1], [2, 1]]


def test_distributed_checkpoint_resumes_exactly(tmp_path):
    """torch.distributed.checkpoint saves the sharded state (DTensors) of an FSDP2 model's
    sgdlab optimizer and restores it into a fresh one: the resumed run equals the
    uninterrupted one bit for bit — per-tensor scalars (NAdam's mu_product, Schedule-Free's
    weights) included — and taking the state dict steps nothing."""
    res = launch("dcp", tmp_path)
    for rule in ("adamw", "nadam", "sf-adamw"):
        assert res[f"{rule}_no_phantom_step"], rule
        assert res[f"{rule}_engine"] == "rust", rule
        assert res[f"{rule}_steps"] == 3, rule
        assert res[f"{rule}_equal"], rule


def test_a_state_entry_written_from_outside_is_adopted():
    """``optimizer.state[p] = {...}`` in torch.optim's layout (as ZeRO's and Lightning's loads
    write it) replaces that parameter's state at the next step, exactly."""
    model, ref = w.mlp(), w.mlp()
    opt, tref = st.AdamW(model.parameters(), lr=0.01), torch.optim.AdamW(ref.parameters(), lr=0.01)
    x, y = w.data()
    for m, o in ((model, opt), (ref, tref)):
        for t in range(3):
            o.zero_grad()
            w.loss_of(m, x, y, t).backward()
            o.step()
    # The Rust engine's state reads as torch.optim's, and refuses item writes.
    p, q = next(model.parameters()), next(ref.parameters())
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
    assert torch.allclose(opt.state[p]["exp_avg"], tref.state[q]["exp_avg"], rtol=1e-12)
    with pytest.raises(TypeError, match="read-only"):
        opt.state[p]["exp_avg"] = torch.zeros(3)
    for pa, pb in zip(model.parameters(), ref.parameters()):
        opt.state[pa] = {k: v.clone() for k, v in tref.state[pb].items()}
    for m, o in ((model, opt), (ref, tref)):
        for t in range(3, 5):
            o.zero_grad()
            w.loss_of(m, x, y, t).backward()
            o.step()
    assert opt.implementation == "rust" and opt.steps == 5
    assert w.max_diff(list(model.parameters()), list(ref.parameters())) <= 1e-14
    assert math.isfinite(float(opt.state[p]["step"]))


def test_deepspeed_zero2_with_cpu_offload_steps_on_the_rust_kernels(tmp_path):
    """DeepSpeed ZeRO stage 2, optimizer offloaded to the CPU, sgdlab.torch.AdamW as the
    client optimizer: it steps each process's flat float32 partition on the host with the
    Rust kernels, and the run equals DeepSpeed's own run with torch.optim.AdamW as the
    client (float32; measured 4.5e-8). (DeepSpeed's run itself departs from the
    single-process run after its first step, with torch.optim as the client too, at every
    ZeRO stage on the CPU accelerator: not sgdlab's to test.) DeepSpeed runs on the CPU with
    DS_ACCELERATOR=cpu; its communication op is compiled on first use (ninja: the
    environment's bin/ on PATH)."""
    if importlib.util.find_spec("deepspeed") is None:
        pytest.fail("deepspeed is not installed: pip install -r crates/sgdlab-py/requirements-test.txt")
    # DeepSpeed compiles its communication op at first use: without a C++ compiler the test
    # is skipped, except where it is required (SGDLAB_REQUIRE_DEEPSPEED=1, as in .ci/run,
    # which installs one).
    if not (shutil.which("c++") or shutil.which("g++")):
        if os.environ.get("SGDLAB_REQUIRE_DEEPSPEED") == "1":
            pytest.fail("SGDLAB_REQUIRE_DEEPSPEED=1 but no C++ compiler (c++ or g++) on PATH")
        pytest.skip("no C++ compiler on PATH: DeepSpeed cannot build its communication op")
    env = {"DS_ACCELERATOR": "cpu", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    res = launch("deepspeed", tmp_path, **env)
    assert res["sgdlab_wrapper"] == res["torch_wrapper"] == "DeepSpeedZeroOptimizer"
    assert res["engine"] == "rust" and res["steps"] == w.STEPS
    # One flat partition per process: half of the model's 9*5+9+7*9+7+1*7+1 = 132 parameters.
    assert res["flat"] == [[66]]
    got = torch.load(tmp_path / "deepspeed.pt")
    assert w.max_diff(got["sgdlab"], got["torch"]) <= 1e-6
