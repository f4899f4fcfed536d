"""sgdlab.torch against torch.optim: trajectories with parameter groups and schedulers,
state_dict round trips, and every refused input."""

from __future__ import annotations

import copy
import io
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import sgdlab  # noqa: E402
import sgdlab.torch as st  # noqa: E402
from conftest import CONFORMANCE  # noqa: E402

X = torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
Y = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def mlp(dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    ).to(dtype)


def groups(model, lr):
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights}, {"params": biases, "lr": lr * 0.5, "weight_decay": 0.0}]


def train(model, opt, sched, steps, start=0):
    for t in range(start, steps):
        opt.zero_grad()
        loss = ((model(X) - Y) ** 2).mean() * (1 + 0.3 * math.sin(t))
        loss.backward()
        opt.step()
        sched.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def scheduler(opt):
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.2, total_iters=10)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[10])


CONFIGS = {
    "Adam": dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2),
    "Adam-amsgrad": dict(lr=1e-2, amsgrad=True, eps=1e-6),
    "Adam-decoupled": dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    "AdamW": dict(lr=1e-2, weight_decay=0.05),
    "SGD": dict(lr=5e-2, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "SGD-nesterov": dict(lr=5e-2, momentum=0.9, nesterov=True),
    "RMSprop": dict(lr=1e-2, alpha=0.9, momentum=0.5, centered=True, weight_decay=1e-2),
    "Adagrad": dict(lr=5e-2, lr_decay=1e-2, initial_accumulator_value=0.1, weight_decay=1e-2),
    "Adam-maximize": dict(lr=1e-2, maximize=True),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_torch_optim_with_groups_and_a_scheduler(name):
    cls = name.split("-")[0]
    kw = CONFIGS[name]
    results = []
    for module in (torch.optim, st):
        model = mlp()
        opt = getattr(module, cls)(groups(model, kw["lr"]), **kw)
        results.append(train(model, opt, scheduler(opt), 50))
    ref, got = results
    err = float(((got - ref).abs() / ref.abs().max()).max())
    assert err <= 1e-10, err


def test_float32_matches_torch_optim():
    results = []
    for module in (torch.optim, st):
        model = mlp(torch.float32)
        opt = module.AdamW(model.parameters(), lr=1e-2)
        x, y = X.float(), Y.float()
        for _ in range(30):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert float((results[0] - results[1]).abs().max()) <= 1e-5


def test_stored_reference_groups_and_sequential_lr():
    """The repository's stored torch reference (AdamW, two groups, SequentialLR), replayed
    through sgdlab.torch — independent of the torch installed."""
    ref = json.loads((CONFORMANCE.parent / "reference" / "torch-adamw-groups-sequentiallr.json").read_text())
    tensors = {t["name"]: torch.tensor(t["init"], dtype=torch.float64).reshape(t["shape"]) for t in ref["tensors"]}
    opt = st.AdamW(
        [
            {"params": [tensors["fc1.weight"], tensors["fc2.weight"]]},
            {"params": [tensors["fc1.bias"], tensors["fc2.bias"]], "weight_decay": 0.0},
        ],
        lr=0.01,
        weight_decay=0.05,
    )
    sched = scheduler_from(opt)
    worst = 0.0
    for t, (g, want) in enumerate(zip(ref["grads"], ref["expected"])):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref["lrs"][t], rel=1e-15)
        for name, p in tensors.items():
            p.grad = torch.tensor(g[name], dtype=torch.float64).reshape(p.shape)
        opt.step()
        sched.step()
        for name, p in tensors.items():
            w = np.array(want[name])
            worst = max(worst, float(np.max(np.abs(p.flatten().numpy() - w) / np.maximum(np.abs(w), 1e-300))))
    assert worst <= 1e-10, worst


def scheduler_from(opt):
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=10)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[10])


@pytest.mark.parametrize("cls", ["Adam", "SGD", "RMSprop", "Adagrad", "AdamW"])
def test_state_dict_round_trip_mid_run_gives_the_uninterrupted_trajectory(cls):
    kw = dict(lr=1e-2)
    if cls == "SGD":
        kw["momentum"] = 0.9
    model = mlp()
    opt = getattr(st, cls)(groups(model, 1e-2), **kw)
    full = train(model, opt, scheduler(opt), 50)

    model = mlp()
    opt = getattr(st, cls)(groups(model, 1e-2), **kw)
    sched = scheduler(opt)
    train(model, opt, sched, 25)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)

    model2 = mlp()
    model2.load_state_dict(saved["model"])
    opt2 = getattr(st, cls)(groups(model2, 1e-2), **kw)
    sched2 = scheduler(opt2)
    sched2.load_state_dict(saved["sched"])
    opt2.load_state_dict(saved["opt"])
    resumed = train(model2, opt2, sched2, 50, start=25)
    assert torch.equal(full, resumed)
    assert opt2.steps == 50


def test_state_dict_exposes_torch_style_state():
    model = mlp()
    opt = st.Adam(model.parameters(), lr=1e-2)
    train(model, opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0), 3)
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1, 2, 3]
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert sd["state"][0]["exp_avg"].shape == model[0].weight.shape
    assert sd["param_groups"][0]["params"] == [0, 1, 2, 3]
    ref = torch.optim.Adam(mlp().parameters(), lr=1e-2)
    m = mlp()
    ref = torch.optim.Adam(m.parameters(), lr=1e-2)
    train(m, ref, torch.optim.lr_scheduler.ConstantLR(ref, factor=1.0), 3)
    assert torch.allclose(ref.state_dict()["state"][0]["exp_avg"], sd["state"][0]["exp_avg"], rtol=1e-12)
    # torch.optim's own state migrates: every parameter at one step count, onto the Rust
    # engine, exactly.
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    assert opt.implementation == "rust" and opt.steps == 3
    assert torch.equal(opt.state[model[0].weight]["exp_avg"], ref.state_dict()["state"][0]["exp_avg"])


def test_generic_optimizer_runs_any_rule_and_matches_the_numpy_core():
    model = mlp()
    opt = st.Optimizer(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 1e-3}],
        spec="lion:lr=1e-4,weight_decay=0.1",
    )
    assert opt.param_groups[0]["lr"] == 1e-4 and opt.param_groups[1]["lr"] == 1e-3
    assert opt.param_groups[0]["weight_decay"] == 0.1
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    ((model(X) - Y) ** 2).mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    # The same step through the numpy interface with the same groups.
    core = sgdlab.Optimizer("lion:lr=1e-4,weight_decay=0.1", groups=["1.*:lr=0.001"])
    arrays = [b.numpy().copy() for b in before]
    core.step(arrays, [g.numpy() for g in grads], names=["0.0", "0.1", "1.0", "1.1"])
    for a, p in zip(arrays, model.parameters()):
        assert np.array_equal(a, p.detach().numpy())
    with pytest.raises(ValueError, match="not a hyper-parameter"):
        st.Optimizer([{"params": mlp().parameters(), "betaa": 0.9}], spec="lion")


def test_schedule_free_eval_and_train():
    model = mlp()
    opt = st.Optimizer(model.parameters(), spec="sf-adamw:lr=0.01,warmup_steps=5")
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    train(model, opt, sched, 10)
    y = [p.detach().clone() for p in model.parameters()]
    opt.eval()
    x = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(xi, torch.from_numpy(opt.core.eval_point(i))) for i, xi in enumerate(x))
    assert not all(torch.equal(a, b) for a, b in zip(x, y))
    opt.train()
    assert all(torch.equal(a, p.detach()) for a, p in zip(y, model.parameters()))


def test_closure_and_counters():
    model = mlp()
    opt = st.SGD(model.parameters(), lr=0.1, skip_nonfinite=True)

    def closure():
        opt.zero_grad()
        loss = ((model(X) - Y) ** 2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and opt.steps == 1
    for p in model.parameters():
        p.grad.fill_(float("nan"))
    opt.step()
    assert opt.skipped == 1 and opt.steps == 1


def test_refused_inputs():
    with pytest.raises(TypeError, match="float32, float64 or bfloat16"):
        st.Adam([torch.zeros(3, dtype=torch.float16, requires_grad=True)])
    with pytest.raises(TypeError, match=r"parameter 0\.0 \(group.index\) is on meta: implementation='rust' steps CPU tensors"):
        st.Adam([torch.zeros(3, device="meta", requires_grad=True)], implementation="rust")
    with pytest.raises(ValueError, match="implementation = 'cuda'"):
        st.Adam(mlp().parameters(), implementation="cuda")
    with pytest.raises(ValueError, match="not supported"):
        st.Adam(mlp().parameters(), capturable=True)
    # Hyper-parameters are checked when the optimizer (or a group) is made, as torch does.
    with pytest.raises(sgdlab.SgdlabError, match="beta1"):
        st.Adam(mlp().parameters(), betas=(1.5, 0.999))
    with pytest.raises(sgdlab.SgdlabError, match="nesterov"):
        st.SGD(mlp().parameters(), lr=0.1, nesterov=True)
    with pytest.raises(sgdlab.SgdlabError, match="lr"):
        st.SGD([{"params": mlp().parameters(), "lr": -1.0}], lr=0.1)

    model = mlp()
    opt = st.Adam(model.parameters(), implementation="rust")
    with pytest.raises(ValueError, match="backward"):
        opt.step()
    ((model(X) - Y) ** 2).mean().backward()
    opt.step()
    model[2].bias.grad = None
    with pytest.raises(ValueError, match="had a gradient at the first step.*implementation='torch'"):
        opt.step()
    with pytest.raises(RuntimeError, match="before the first step"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    model[2].bias.grad = torch.full((3,), float("nan"), dtype=torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(sgdlab.SgdlabError, match="non-finite"):
        opt.step()
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
    mixed = [torch.zeros(2, requires_grad=True), torch.zeros(2, dtype=torch.float64, requires_grad=True)]
    o = st.SGD(mixed, lr=0.1)
    for p in mixed:
        p.grad = torch.ones_like(p)
    with pytest.raises(TypeError, match="one dtype"):
        o.step()


def test_the_readme_notebook_example_runs():
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).resolve().parents[1] / "examples" / "notebook.py"
    run = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    accuracy = float(lines[0].split("accuracy ")[1])
    assert accuracy >= 0.95, lines[0]
    passed, total = map(int, lines[1].split()[0].split("/"))
    assert total >= 60 and passed == total, lines[1]


def test_a_parameter_whose_storage_is_replaced_is_stepped_in_its_new_storage():
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = st.SGD([p], lr=0.5)
    p.grad = torch.ones(4, dtype=torch.float64)
    opt.step()
    p.data = torch.full((4,), 10.0, dtype=torch.float64)
    opt.step()
    assert torch.equal(p.detach(), torch.full((4,), 9.5, dtype=torch.float64))
    p.data = p.data.reshape(2, 2)
    p.grad = torch.ones(2, 2, dtype=torch.float64)
    with pytest.raises(sgdlab.SgdlabError, match="shape|\\[2, 2\\]"):
        opt.step()


def test_bf16_state_through_torch_and_numpy():
    model = mlp(torch.float32)
    opt = st.AdamW(model.parameters(), lr=1e-2, state_dtype="bf16")
    x, y = X.float(), Y.float()
    for _ in range(5):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    assert "state_dtype=bf16" in opt.core.spec
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    # Every value is a bfloat16: its low 16 bits are zero.
    assert (exp_avg.numpy().view(np.uint32) & 0xFFFF == 0).all()
    generic = st.Optimizer(mlp().parameters(), spec="lion:lr=1e-4,state_dtype=bf16,rounding=nearest")
    assert generic.param_groups[0]["lr"] == 1e-4
    with pytest.raises(sgdlab.SgdlabError, match="state_dtype"):
        st.Optimizer(mlp().parameters(), spec="muon:state_dtype=bf16")


def test_q8_state_through_torch_and_numpy():
    """8-bit state on the Rust engine: the exposed moments are the dequantized values, the
    state dict resumes bit for bit, and the torch engine refuses it by name."""
    x, y = X.float(), Y.float()

    def train(m, o, steps):
        for _ in range(steps):
            o.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            o.step()

    def start():
        torch.manual_seed(0)
        m = mlp(torch.float32)
        return m, st.Adam(m.parameters(), lr=1e-2, state_dtype="q8", rounding="nearest")

    model, opt = start()
    train(model, opt, 3)
    assert "state_dtype=q8" in opt.core.spec
    saved = copy.deepcopy(opt.state_dict())
    v = opt.state[next(iter(model.parameters()))]["exp_avg_sq"]
    assert v.dtype == torch.float32 and (v >= 0).all()
    # A block's largest second moment is its scale, held exactly (the unsigned book's 1).
    block = v.flatten()[:256]
    assert (block == block.max()).any()
    train(model, opt, 2)
    # The same three steps, then a fresh optimizer from the saved state: the same weights.
    other, other_opt = start()
    train(other, other_opt, 3)
    resumed = st.Adam(other.parameters(), lr=1e-2, state_dtype="q8", rounding="nearest")
    resumed.load_state_dict(saved)
    train(other, resumed, 2)
    for a, b in zip(other.parameters(), model.parameters()):
        assert torch.equal(a, b)
    generic = sgdlab.Optimizer("adamw:lr=1e-3,state_dtype=q8,block_size=64")
    p = [np.linspace(-1, 1, 1000, dtype=np.float32)]
    generic.step(p, [np.cos(p[0] * 7).astype(np.float32)])
    m = generic.state("exp_avg", 0)
    assert m.dtype == np.float32 and m.shape == (1000,)
    # A parameter that loses its gradient: the Rust engine keeps its tensors, and the error
    # does not offer the torch engine, which q8 state does not have.
    first = next(iter(model.parameters()))
    first.grad = None
    with pytest.raises(ValueError, match="no torch engine"):
        opt.step()
    torched = mlp(torch.float32)
    engine = st.Adam(torched.parameters(), state_dtype="q8", implementation="torch")
    ((torched(x) - y) ** 2).mean().backward()
    with pytest.raises(ValueError, match="q8"):
        engine.step()


def _bits(t):
    """A bfloat16 tensor's bits as a numpy uint16 array (a copy)."""
    return t.detach().view(torch.int16).numpy().view(np.uint16).copy()


def test_bf16_parameters_with_master_weights_follow_float32():
    """bfloat16 parameters with a float32 master copy step exactly like float32 parameters
    started at the same values on the same (bfloat16) gradients; the parameters are the
    master rounded to nearest (torch's own float32 -> bfloat16 conversion)."""
    model16 = mlp(torch.float32).to(torch.bfloat16)
    model32 = mlp(torch.float32)
    with torch.no_grad():
        for a, b in zip(model32.parameters(), model16.parameters()):
            a.copy_(b.float())
    opt16 = st.AdamW(model16.parameters(), lr=1e-2, master_weights=True)
    opt32 = st.AdamW(model32.parameters(), lr=1e-2)
    x, y = X.to(torch.bfloat16), Y.to(torch.bfloat16)
    for _ in range(5):
        opt16.zero_grad()
        ((model16(x) - y) ** 2).mean().backward()
        for a, b in zip(model32.parameters(), model16.parameters()):
            a.grad = b.grad.float()
        opt16.step()
        opt32.step()
        for t, (a, b) in enumerate(zip(model32.parameters(), model16.parameters())):
            master = opt16.core.master(t)
            assert np.array_equal(master, a.detach().numpy().ravel())
            assert torch.equal(b.detach(), a.detach().to(torch.bfloat16))
    assert "master_weights=true" in opt16.core.spec
    # The master copy is in the checkpoint: a reload continues it.
    state = opt16.state_dict()
    again = st.AdamW(model16.parameters(), lr=1e-2, master_weights=True)
    again.load_state_dict(state)
    assert np.array_equal(again.core.master(0), opt16.core.master(0))


def test_bf16_parameters_without_master_round_stochastically():
    """Without a master copy a quarter-ulp update survives on average (stochastic rounding)
    and is lost with rounding="nearest"."""
    n = 100_000
    for rounding, moved in (("stochastic", True), ("nearest", False)):
        p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
        opt = st.SGD([p], lr=2.0**-9) if rounding == "stochastic" else st.Optimizer(
            [p], spec="sgd:lr=0.001953125,rounding=nearest")
        p.grad = torch.ones(n, dtype=torch.bfloat16)
        opt.step()
        mean = p.detach().double().mean().item()
        if moved:
            # Each element drops to 1 - 2^-7 with probability 1/4: mean 1 - 2^-9.
            se = 2.0**-7 * math.sqrt(3 / 16) / math.sqrt(n)
            assert abs(mean - (1 - 2.0**-9)) < 5 * se
        else:
            assert mean == 1.0


def test_bf16_parameters_refusals():
    a = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.ones(4, dtype=torch.float32))
    opt = st.SGD([a, b], lr=0.1)
    a.grad = torch.ones(4, dtype=torch.bfloat16)
    b.grad = torch.ones(4, dtype=torch.float32)
    with pytest.raises(TypeError, match="mix bfloat16"):
        opt.step()
    # maximize flips the sign bit of bfloat16 gradients.
    c = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = st.Adam([c], lr=0.5, maximize=True)
    c.grad = torch.ones(4, dtype=torch.bfloat16)
    opt.step()
    assert (c.detach().float() > 1.0).all()
    # The numpy core: uint16 parameters, and nothing else, go through step_bf16.
    core = sgdlab.Optimizer("sgd:lr=0.5,master_weights=true")
    w = _bits(torch.ones(3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="uint16"):
        core.step_bf16([np.ones(3, dtype=np.float32)], [np.ones(3, dtype=np.float32)])
    with pytest.raises(TypeError, match="gradients"):
        core.step_bf16([w], [np.ones(3, dtype=np.float64)])
    with pytest.raises(sgdlab.SgdlabError, match="step_bf16"):
        core.step([np.ones(3, dtype=np.float32)], [np.ones(3, dtype=np.float32)])
    core.step_bf16([w], [np.ones(3, dtype=np.float32)])
    assert np.array_equal(core.master(0), np.full(3, 0.5, dtype=np.float32))
    assert np.array_equal(w, _bits(torch.full((3,), 0.5, dtype=torch.bfloat16)))


@pytest.mark.parametrize("impl", ["rust", "torch"])
def test_unknown_group_keys_are_kept_as_torch_keeps_them(impl):
    model, ref = mlp(), mlp()
    opt = st.AdamW([{"params": model.parameters(), "name": "all"}], lr=0.01, implementation=impl)
    tref = torch.optim.AdamW([{"params": ref.parameters(), "name": "all"}], lr=0.01)
    swa = torch.optim.swa_utils.SWALR(opt, swa_lr=0.005, anneal_epochs=3)
    swa_ref = torch.optim.swa_utils.SWALR(tref, swa_lr=0.005, anneal_epochs=3)
    for _ in range(4):
        for o, m in ((opt, model), (tref, ref)):
            o.zero_grad()
            ((m(X) - Y) ** 2).mean().backward()
            o.step()
        swa.step()
        swa_ref.step()
    assert opt.param_groups[0]["name"] == "all" and opt.param_groups[0]["swa_lr"] == 0.005
    assert opt.state_dict()["param_groups"][0]["name"] == "all"
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    # An sgdlab key that this rule does not take, or a near miss of one of its keys, is a
    # mistake torch would keep unread: an error.
    with pytest.raises(ValueError, match="`momentum` is not a hyper-parameter of sgdlab's `adamw`"):
        st.AdamW([{"params": mlp().parameters(), "momentum": 0.9}])
    with pytest.raises(ValueError, match="`weight_decy` is not a hyper-parameter"):
        st.AdamW([{"params": mlp().parameters(), "weight_decy": 0.1}])


def newton_schulz_in_float64(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's iteration (``_zeropower_via_newtonschulz``) in the gradient's own
    float64 rather than bfloat16, as the conformance file was recorded."""
    a, b, c = ns_coefficients
    x = grad.clone()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


@pytest.mark.parametrize("impl", ["rust", "torch"])
def test_muon_for_matrices_and_adamw_for_the_rest_as_torch_optim(impl, monkeypatch):
    monkeypatch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz", newton_schulz_in_float64)
    model, ref = mlp(), mlp()
    matrices = [p for p in model.parameters() if p.dim() == 2]
    others = [p for p in model.parameters() if p.dim() != 2]
    opt = st.Optimizer(
        [{"params": matrices}, {"params": others, "rule": "adamw", "lr": 3e-3, "name": "vectors"}],
        spec="muon:lr=0.02",
        implementation=impl,
    )
    # The AdamW group starts from AdamW's defaults, not Muon's.
    assert opt.param_groups[1]["weight_decay"] == 0.01 and "nesterov" not in opt.param_groups[1]
    muon = torch.optim.Muon([p for p in ref.parameters() if p.dim() == 2], lr=0.02)
    adamw = torch.optim.AdamW([p for p in ref.parameters() if p.dim() != 2], lr=3e-3)
    for _ in range(4):
        opt.zero_grad(), muon.zero_grad(), adamw.zero_grad()
        ((model(X) - Y) ** 2).mean().backward()
        ((ref(X) - Y) ** 2).mean().backward()
        opt.step(), muon.step(), adamw.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="not an sgdlab rule"):
        st.Optimizer([{"params": mlp().parameters(), "rule": "adamz"}], spec="muon")


@pytest.mark.parametrize("impl", ["rust", "torch"])
def test_cautious_masking_per_group(impl):
    model = mlp()
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = st.Optimizer([{"params": weights, "cautious": True}, {"params": biases}], spec="lion:lr=1e-3", implementation=impl)
    opt.zero_grad()
    ((model(X) - Y) ** 2).mean().backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    before = [p.detach().numpy().copy() for p in model.parameters()]
    opt.step()
    core = sgdlab.Optimizer("lion:lr=1e-3", groups=["0.weight,2.weight:cautious=true"])
    core.step(before, [g.numpy() for g in grads], names=["0.weight", "0.bias", "2.weight", "2.bias"])
    for a, p in zip(before, model.parameters()):
        assert np.allclose(a, p.detach().numpy(), rtol=1e-12, atol=1e-15)


def run_steps(model, opt, steps=5):
    for t in range(steps):
        opt.zero_grad()
        (((model(X) - Y) ** 2).mean() * (1 + 0.3 * math.sin(t))).backward()
        opt.step()


@pytest.mark.parametrize("impl", ["rust", "torch"])
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("NAdam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, momentum_decay=0.01)),
        ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
        ("RAdam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
        ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
        ("Adamax", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, eps=1e-6)),
    ],
)
def test_classes_with_torch_optims_signature_follow_torch_optim(name, kwargs, impl):
    model, ref = mlp(), mlp()
    opt = getattr(st, name)(groups(model, kwargs["lr"]), implementation=impl, **kwargs)
    tref = getattr(torch.optim, name)(groups(ref, kwargs["lr"]), **kwargs)
    run_steps(model, opt)
    # torch keeps NAdam's μ product in the default dtype (made at the first step): float64
    # here, as the parameters.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        run_steps(ref, tref)
    finally:
        torch.set_default_dtype(default)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize("impl", ["rust", "torch"])
@pytest.mark.parametrize(
    "name, kwargs, spec",
    [
        ("Lion", dict(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.1), "lion:lr=1e-3,beta1=0.8,beta2=0.95,weight_decay=0.1"),
        ("ADOPT", dict(lr=1e-3, betas=(0.8, 0.99), clip=None, weight_decay=0.1, weight_decouple=True),
         "adopt:lr=1e-3,beta1=0.8,beta2=0.99,clip=none,weight_decay=0.1,decoupled_weight_decay=true"),
        ("Adan", dict(lr=1e-3, betas=(0.9, 0.9, 0.95), weight_decay=0.1), "adan:lr=1e-3,beta1=0.9,beta2=0.9,beta3=0.95,weight_decay=0.1"),
        ("AdEMAMix", dict(lr=1e-3, betas=(0.8, 0.99, 0.999), alpha=3.0, t_alpha_beta3=4),
         "ademamix:lr=1e-3,beta1=0.8,beta2=0.99,beta3=0.999,alpha=3,t_alpha_beta3=4"),
        ("ScheduleFreeAdamW", dict(lr=0.01, betas=(0.8, 0.99), warmup_steps=2), "sf-adamw:lr=0.01,beta1=0.8,beta2=0.99,warmup_steps=2"),
        ("ScheduleFreeSGD", dict(lr=0.1, momentum=0.8, weight_decay=0.01), "sf-sgd:lr=0.1,momentum=0.8,weight_decay=0.01"),
        ("Madam", dict(lr=0.01, p_scale=2.0, g_bound=5.0), "madam:lr=0.01,p_scale=2,g_bound=5"),
        ("Lion", dict(lr=1e-3, cautious=True, state_dtype="bf16"), "lion:lr=1e-3,weight_decay=0,cautious=true,state_dtype=bf16"),
    ],
)
def test_classes_with_a_reference_packages_signature_are_their_sgdlab_spec(name, kwargs, spec, impl):
    model, ref = mlp(), mlp()
    run_steps(model, getattr(st, name)(model.parameters(), implementation=impl, **kwargs))
    run_steps(ref, st.Optimizer(ref.parameters(), spec=spec, implementation=impl))
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("impl", ["rust", "torch"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(weight_decay=0.01),
        dict(lr=0.5, betas=(0.8, 0.99), beta3=0.9, use_bias_correction=True, safeguard_warmup=True, d0=1e-4),
        dict(betas=(0.0, 0.999), weight_decay=0.05, decouple=False, d_coef=2.0, growth_rate=1.1, d0=1e-3),
    ],
)
def test_prodigy_follows_prodigyopt(kwargs, impl):
    # The authors' package, with parameter groups (no decay on biases) and a frozen group at
    # lr 0 (which the package still decays by the shared step); every group shows d.
    prodigyopt = pytest.importorskip("prodigyopt")

    def grouped(model):
        named = dict(model.named_parameters())
        return [
            {"params": [named["0.weight"], named["2.weight"]]},
            {"params": [named["0.bias"]], "weight_decay": 0.0, "eps": 1e-6},
            {"params": [named["2.bias"]], "lr": 0.0},
        ]

    model, ref = mlp(), mlp()
    opt = st.Prodigy(grouped(model), implementation=impl, **kwargs)
    tref = prodigyopt.Prodigy(grouped(ref), **kwargs)
    run_steps(model, opt, steps=40)
    run_steps(ref, tref, steps=40)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    for g, h in zip(opt.param_groups, tref.param_groups):
        for key in ("d", "d_max", "d_numerator"):
            assert g[key] == pytest.approx(h[key], rel=1e-10), key
        assert g["k"] == h["k"] == 40
    assert opt.param_groups[0]["d"] > kwargs.get("d0", 1e-6)
    # The package's range errors, and what sgdlab's Prodigy does not do.
    with pytest.raises(sgdlab.SgdlabError, match="d0"):
        st.Prodigy(mlp().parameters(), d0=0.0).step()
    with pytest.raises(ValueError, match="slice_p"):
        st.Prodigy(mlp().parameters(), slice_p=11)


@pytest.mark.parametrize("impl", ["rust", "torch"])
def test_soap_follows_pytorch_optimizer(impl, monkeypatch):
    # pytorch-optimizer's SOAP with its power iteration's QR in float64 (the package rounds its
    # input to float32 first; sgdlab runs it in float64): the MLP's matrices are rotated on
    # their sides of at most max_precondition_dim = 10 (16×5 and 3×16: 5, 3 and the 16s kept
    # as identity), its biases are vectors (not rotated).
    po = pytest.importorskip("pytorch_optimizer")

    def qr_in_float64(self, state, max_precondition_dim=10000, merge_dims=False):
        exp_avg_sq = state["exp_avg_sq"]
        matrices = []
        for ind, (m, o) in enumerate(zip(state["GG"], state["Q"])):
            if len(m) == 0:
                matrices.append([])
                continue
            product = m @ o
            order = torch.argsort((o * product).sum(dim=0), descending=True)
            exp_avg_sq = exp_avg_sq.index_select(ind, order)
            matrices.append(torch.linalg.qr(product.index_select(1, order))[0])
        state["exp_avg_sq"] = exp_avg_sq
        return matrices

    monkeypatch.setattr(po.SOAP, "get_orthogonal_matrix_qr", qr_in_float64)
    kwargs = dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.05, precondition_frequency=3, max_precondition_dim=10)
    model, ref = mlp(), mlp()
    run_steps(model, st.SOAP(model.parameters(), implementation=impl, **kwargs), steps=12)
    run_steps(ref, po.SOAP(ref.parameters(), **kwargs), steps=12)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="merge_dims"):
        st.SOAP(mlp().parameters(), merge_dims=True)
    conv = torch.nn.Parameter(torch.zeros(2, 3, 4, dtype=torch.float64))
    opt = st.SOAP([conv], implementation=impl)
    conv.grad = torch.ones_like(conv)
    with pytest.raises((ValueError, sgdlab.SgdlabError), match="soap steps matrices and vectors"):
        opt.step()


def test_prodigy_groups_share_their_estimate():
    model = mlp()
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    for impl in ("rust", "torch"):
        for bad, match in (({"lr": 0.5}, r"lr of parameter group \d"), ({"d0": 1e-3}, r"d0 of parameter group \d")):
            opt = st.Prodigy([{"params": weights}, {"params": biases, **bad}], implementation=impl)
            before = [p.detach().clone() for p in model.parameters()]
            model.zero_grad()
            ((model(X) - Y) ** 2).mean().backward()
            with pytest.raises(sgdlab.SgdlabError, match=match):
                opt.step()
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_muon_class_follows_torch_optim_muon(monkeypatch):
    monkeypatch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz", newton_schulz_in_float64)
    for impl in ("rust", "torch"):
        model, ref = mlp(), mlp()
        mats = [p for p in model.parameters() if p.dim() == 2]
        opt = st.Muon([{"params": mats}, {"params": [p for p in model.parameters() if p.dim() != 2], "rule": "adamw", "lr": 0.02}],
                      lr=0.02, adjust_lr_fn="match_rms_adamw", implementation=impl)
        muon = torch.optim.Muon([p for p in ref.parameters() if p.dim() == 2], lr=0.02, adjust_lr_fn="match_rms_adamw")
        adamw = torch.optim.AdamW([p for p in ref.parameters() if p.dim() != 2], lr=0.02)
        for _ in range(3):
            for o in (opt, muon, adamw):
                o.zero_grad()
            ((model(X) - Y) ** 2).mean().backward()
            ((ref(X) - Y) ** 2).mean().backward()
            for o in (opt, muon, adamw):
                o.step()
        for a, b in zip(model.parameters(), ref.parameters()):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), impl
    with pytest.raises(ValueError, match="ns_coefficients"):
        st.Muon(mlp().parameters(), ns_coefficients=(3.0, -4.0, 2.0))


def test_every_rule_has_a_class_or_the_generic_optimizer():
    classes = {getattr(st, n)(mlp().parameters())._rule for n in st.__all__ if n not in ("Optimizer", "SgdlabError", "Muon")}
    classes |= {"muon"}
    problem_set = {"ema-momentum", "normsgd", "multiplicative", "lossprop"}  # sgdlab.torch.Optimizer(spec=...)
    assert set(sgdlab.rules()) == classes | problem_set | {"adamw"}


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
        ("AdamW", dict(lr=0.01)),
        ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
        ("NAdam", dict(lr=0.01)),
        ("Adagrad", dict(lr=0.05, lr_decay=0.01)),
        ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ],
)
def test_parameters_join_leave_and_return_as_in_torch_optim(name, kwargs):
    # The torch engine counts steps per parameter, as torch.optim: a frozen layer keeps its
    # state and count, an unfrozen one resumes it, and a group added late starts at 1.
    model, ref = mlp(), mlp()
    extra, extra_ref = (torch.nn.Parameter(torch.linspace(-1, 1, 4, dtype=torch.float64)) for _ in range(2))
    opt = getattr(st, name)(model.parameters(), implementation="torch", **kwargs)
    tref = getattr(torch.optim, name)(ref.parameters(), **kwargs)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch's NAdam keeps μ products in it
    try:
        for t in range(8):
            if t == 4:
                opt.add_param_group({"params": [extra], "lr": 0.02})
                tref.add_param_group({"params": [extra_ref], "lr": 0.02})
            for o, m, e in ((opt, model, extra), (tref, ref, extra_ref)):
                o.zero_grad()
                loss = ((m(X) - Y) ** 2).mean() * (1 + 0.3 * math.sin(t))
                if t >= 4:
                    loss = loss + (e**2).sum() * (t - 3)
                loss.backward()
                if t in (2, 3):
                    m[2].weight.grad = None  # frozen for two steps
                if t == 6:
                    m[0].bias.grad = None
                o.step()
    finally:
        torch.set_default_dtype(default)
    for a, b in zip(list(model.parameters()) + [extra], list(ref.parameters()) + [extra_ref]):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), name
    sd = opt.state_dict()["state"]
    assert float(sd[2]["step"]) == 6 and float(sd[4]["step"]) == 4


def test_torch_optim_state_dicts_migrate_both_ways():
    model, ref = mlp(), mlp()
    tref = torch.optim.AdamW(groups(ref, 0.01), lr=0.01, amsgrad=True)
    run_steps(ref, tref, steps=3)
    model.load_state_dict(ref.state_dict())
    opt = st.AdamW(groups(model, 0.01), lr=0.5, amsgrad=True)  # the state dict's lr wins
    opt.load_state_dict(tref.state_dict())
    assert opt.implementation == "rust" and opt.param_groups[0]["lr"] == 0.01
    run_steps(model, opt, steps=3)
    run_steps(ref, tref, steps=3)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    # Parameters at different step counts (a layer frozen for a step): onto the torch
    # engine, which counts steps per parameter as torch.optim does.
    model, ref = mlp(), mlp()
    model.load_state_dict(ref.state_dict())
    tref = torch.optim.AdamW(ref.parameters(), lr=0.01)
    run_steps(ref, tref, steps=2)
    tref.zero_grad()
    ((ref(X) - Y) ** 2).mean().backward()
    ref[0].weight.grad = None
    tref.step()
    model.load_state_dict(ref.state_dict())
    opt = st.AdamW(model.parameters(), lr=0.5)
    opt.load_state_dict(tref.state_dict())
    assert opt.implementation == "torch"
    run_steps(model, opt, steps=3)
    run_steps(ref, tref, steps=3)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="different step counts.*implementation='torch'"):
        st.AdamW(mlp().parameters(), implementation="rust").load_state_dict(tref.state_dict())
    # And back: sgdlab's state dict of either engine loads into torch.optim.
    for impl in ("rust", "torch"):
        model, ref = mlp(), mlp()
        opt = st.AdamW(model.parameters(), lr=0.01, implementation=impl)
        run_steps(model, opt, steps=3)
        ref.load_state_dict(model.state_dict())
        tref = torch.optim.AdamW(ref.parameters(), lr=0.01)
        tref.load_state_dict(copy.deepcopy(opt.state_dict()))  # as through torch.save: no shared buffers
        run_steps(model, opt, steps=3)
        run_steps(ref, tref, steps=3)
        for a, b in zip(model.parameters(), ref.parameters()):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), impl
    # Another algorithm's state is refused, naming both.
    m = mlp()
    sgd = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    run_steps(m, sgd, steps=2)
    with pytest.raises(ValueError, match="parameter group 0 is not one of sgdlab's `adamw`: parameter group key `momentum`"):
        st.AdamW(mlp().parameters()).load_state_dict(sgd.state_dict())
    for k in ("momentum", "dampening", "nesterov"):  # keys AdamW would take: the buffers differ
        sgd.param_groups[0].pop(k)
    with pytest.raises(ValueError, match=r"holds \['momentum_buffer'\], and sgdlab's `adamw` keeps \['exp_avg', 'exp_avg_sq'\]"):
        st.AdamW(mlp().parameters()).load_state_dict(sgd.state_dict())


def test_auto_moves_to_the_torch_engine_when_the_parameter_set_changes():
    # On the CPU, "auto" steps on the Rust kernels; a layer frozen (or a group added) later
    # moves the state, exactly, to the torch engine, which counts steps per parameter.
    # With them, per-tensor scalars (NAdam's μ product, Madam's bound, Schedule-Free's
    # averaging weights) and bfloat16 state.
    for cls, kw in (
        (st.AdamW, dict(lr=0.01, state_dtype="bf16", rounding="nearest")),
        (st.NAdam, dict(lr=0.01)),
        (st.ScheduleFreeAdamW, dict(lr=0.01, warmup_steps=2)),
        (st.Madam, dict(lr=0.01)),
        (st.Prodigy, dict(weight_decay=0.01)),
        # Only the sides whose first statistic has full rank (5 and 3) are rotated: a
        # rank-deficient one's null-space eigenvectors are each eigensolver's own.
        (st.SOAP, dict(lr=0.01, precondition_frequency=2, max_precondition_dim=10)),
    ):
        model, ref = mlp(), mlp()
        opt, tref = cls(model.parameters(), **kw), cls(ref.parameters(), implementation="torch", **kw)
        for t in range(6):
            for o, m in ((opt, model), (tref, ref)):
                o.zero_grad()
                (((m(X) - Y) ** 2).mean() * (1 + 0.3 * math.sin(t))).backward()
                if t in (3, 4):
                    m[0].weight.grad = None
                o.step()
            assert opt.implementation == ("rust" if t < 3 else "torch"), cls
        for a, b in zip(model.parameters(), ref.parameters()):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), cls
    late = st.SGD(mlp().parameters(), lr=0.1, momentum=0.9)
    late.param_groups[0]["params"][0].grad = torch.ones_like(late.param_groups[0]["params"][0])
    late.step()
    late.add_param_group({"params": [torch.zeros(2, dtype=torch.float64, requires_grad=True)]})
    assert late.implementation == "torch" and late.steps == 1
    # implementation="rust" keeps its fixed set and says why.
    nadam = st.NAdam(mlp().parameters(), implementation="rust")
    nadam.param_groups[0]["params"][0].grad = torch.ones_like(nadam.param_groups[0]["params"][0])
    nadam.step()
    nadam.param_groups[0]["params"][0].grad = None
    nadam.param_groups[0]["params"][1].grad = torch.ones_like(nadam.param_groups[0]["params"][1])
    with pytest.raises(ValueError, match="had a gradient at the first step"):
        nadam.step()


@pytest.mark.parametrize(
    "dtype, kw",
    [
        (torch.float32, dict(state_dtype="bf16")),
        (torch.float32, dict(state_dtype="bf16", rounding="nearest")),
        (torch.bfloat16, dict(master_weights=True)),
        (torch.bfloat16, dict()),
    ],
)
def test_a_torch_optim_layout_state_resumes_the_rust_engine_bit_for_bit(dtype, kw):
    """The state dict without its ``sgdlab`` entry (what torch.distributed.checkpoint and
    ZeRO keep: ``state`` and ``param_groups``) loads into the Rust engine and resumes bit for
    bit, bfloat16 state and master copies included."""
    def make():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)
        return m, st.AdamW(m.parameters(), lr=0.01, **kw)

    x, y = X.to(dtype), Y.to(dtype)

    def steps(m, opt, ts):
        for t in ts:
            opt.zero_grad()
            ((m(x) - y) ** 2).mean().mul(1 + 0.3 * math.sin(t)).backward()
            opt.step()

    m1, o1 = make()
    steps(m1, o1, range(3))
    saved = {k: v for k, v in copy.deepcopy(o1.state_dict()).items() if k != "sgdlab"}
    m2, o2 = make()
    m2.load_state_dict(m1.state_dict())
    o2.load_state_dict(saved)
    assert o2.implementation == "rust" and o2.steps == 3
    steps(m1, o1, range(3, 6))
    steps(m2, o2, range(3, 6))
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("implementation", ["rust", "torch"])
@pytest.mark.parametrize("spec, kw", [("adamw", {}), ("adamw", {"clip_norm": 1.0}), ("lion", {}), ("sgd:momentum=0.9", {})])
def test_an_empty_parameter_steps_with_the_others(implementation, spec, kw):
    """A zero-size parameter (a process's empty shard under FSDP2) steps with the others in
    either engine, checked, clipped or not, as if it were not there."""
    def run(with_empty):
        b = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        ps = [torch.nn.Parameter(torch.zeros(0, 3)), b] if with_empty else [b]
        opt = st.Optimizer(ps, spec, implementation=implementation, **kw)
        for t in range(3):
            for p in ps:
                p.grad = torch.full_like(p, 0.5 + t)
            opt.step()
        return b.detach()

    assert torch.equal(run(True), run(False))
