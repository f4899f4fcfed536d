"""The torch engine (``implementation="torch"``: the rules in torch operations, for tensors on
any device) against the Rust kernels, on CPU tensors: every conformance file, every global
key, bfloat16 state with the same stochastic-rounding bits, ``meta`` tensors."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sgdlab  # noqa: E402
import sgdlab.torch as st  # noqa: E402
from sgdlab import _foreach  # noqa: E402
from conftest import CONFORMANCE  # noqa: E402

CASES = sorted(CONFORMANCE.glob("*.json"))
# The device the torch engine runs on (the Rust kernels always run on the CPU): the CPU in
# the suite; `SGDLAB_TEST_DEVICE=cuda` runs the same comparisons on a GPU.
DEVICE = torch.device(os.environ.get("SGDLAB_TEST_DEVICE", "cpu"))
# The bar: the torch engine within 1e-12 (float64, relative) and 1e-6 (float32) of
# the Rust kernels on every conformance file.
TOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def run(case, dtype, implementation, **kwargs):
    """Steps a conformance case through sgdlab.torch; returns each step's parameters (and
    evaluation points for Schedule-Free)."""
    shape = tuple(case.get("shape") or [len(case["init"])])
    device = DEVICE if implementation == "torch" else torch.device("cpu")
    p = torch.nn.Parameter(torch.tensor(case["init"], dtype=dtype).reshape(shape).to(device))
    opt = st.Optimizer([p], spec=case["optimizer"], implementation=implementation, **kwargs)
    losses = case.get("losses")
    params, evals = [], []
    for t, g in enumerate(case["grads"]):
        p.grad = torch.tensor(g, dtype=dtype).reshape(shape).to(device)
        closure = None if losses is None else (lambda t=t: torch.tensor(losses[t], dtype=torch.float64))
        opt.step(closure)
        params.append(p.detach().double().reshape(-1).to("cpu", copy=True))
        if "expected_eval" in case:
            opt.eval()
            evals.append(p.detach().double().reshape(-1).to("cpu", copy=True))
            opt.train()
    assert opt.implementation == implementation
    assert opt.steps == len(case["grads"])
    return torch.stack(params).numpy(), (torch.stack(evals).numpy() if evals else None), opt


def rel_err(got, want):
    """Each coordinate's error relative to its largest magnitude over the trajectory."""
    scale = np.maximum(np.abs(want).max(axis=0), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(got - want) / scale))


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_torch_engine_matches_the_rust_kernels(path, dtype):
    case = json.loads(path.read_text())
    got, got_eval, opt_t = run(case, dtype, "torch")
    want, want_eval, opt_r = run(case, dtype, "rust")
    tol = TOL[dtype]
    if DEVICE.type != "cpu" and dtype == torch.float32 and _foreach.RULES[case["optimizer"].split(":")[0]].matrix:
        # Five Newton–Schulz iterations amplify the GPU's float32 matrix products' own order
        # of accumulation (1.3e-6 measured on an H200).
        tol = 2e-6
    ill_conditioned = dtype == torch.float32 and path.stem == "prodigy-options-l2"
    if ill_conditioned:
        # Prodigy without momentum and with L2 decay steps by d·g/(√v + dε) with d a ratio of
        # sums in which the numerator cancels: torch's CPU add-with-alpha is a fused
        # multiply-add, one unit in the last place at step 5 that the estimate amplifies
        # (prodigyopt's own float32 run misses its float64 reference by 1.3e-4 on this file).
        tol = 1e-4
    assert rel_err(got, want) <= tol
    if want_eval is not None:
        assert rel_err(got_eval, want_eval) <= TOL[dtype]
    if dtype == torch.float64 and "expected" in case:
        assert rel_err(got, np.array(case["expected"])) <= 2e-10
    # The same state, under the same names, as the Rust engine's state dict shows it.
    s_t = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in opt_t.state_dict()["state"][0].items()}
    s_r = opt_r.state_dict()["state"][0]
    rule = case["optimizer"].split(":")[0]
    scalars = set(_foreach.RULES[rule].scalars)
    extra = scalars | {"step", "master"}
    slots = {k for k, v in s_r.items() if isinstance(v, torch.Tensor) and k not in extra}
    assert slots == {k for k, v in s_t.items() if isinstance(v, torch.Tensor) and k not in extra}
    # The per-tensor scalars (NAdam's mu_product, Madam's max, Schedule-Free's averaging
    # weights) under the same names and values in both engines' state dicts.
    assert {k for k in s_r if k in scalars} == {k for k in s_t if k in scalars} == scalars
    for k in scalars:
        assert float(s_t[k]) == pytest.approx(float(s_r[k]), rel=1e-3 if ill_conditioned else 1e-12), k
    # The state to the same bar, relative to its largest element; on a GPU, float32 state
    # (an EMA of gradients that cancel, say) also carries the device's own roundings (fused
    # multiply-adds, torch's lerp): 1e-4 there.
    state_tol = TOL[dtype] if dtype == torch.float64 or DEVICE.type == "cpu" else 1e-4
    if ill_conditioned:
        state_tol = 1e-3
    for k in slots:
        assert s_t[k].shape == s_r[k].shape, k
        if s_r[k].numel() == 0:  # SOAP's statistics of a side that is not rotated
            continue
        scale = max(float(s_r[k].abs().max()), 1e-300)
        assert float((s_t[k].double() - s_r[k].double()).abs().max()) / scale <= state_tol


@pytest.mark.parametrize("path", [p for p in CASES if "adam" in p.stem], ids=lambda p: p.stem)
def test_adam_without_torchs_fused_kernels(path, monkeypatch):
    # Adam and AdamW step through torch's fused kernels where those compute the same rule;
    # the _foreach operations (bf16 state, other bias corrections) are held to the same bar.
    monkeypatch.setattr(_foreach, "FUSED", False)
    case = json.loads(path.read_text())
    for dtype in (torch.float64, torch.float32):
        got, _, _ = run(case, dtype, "torch")
        want, _, _ = run(case, dtype, "rust")
        assert rel_err(got, want) <= TOL[dtype]


def test_every_rule_has_a_torch_implementation():
    assert set(_foreach.RULES) == set(sgdlab.rules())


def grads_for(shapes, steps, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=dtype) for s in shapes] for _ in range(steps)]


def both(spec, shapes, steps=6, dtype=torch.float64, groups=None, seed=0, param_dtype=None, grad_dtype=None, **kw):
    """The parameters after `steps` steps of each engine, from the same start and gradients."""
    gen = torch.Generator().manual_seed(seed + 1)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    out = {}
    for impl in ("rust", "torch"):
        device = DEVICE if impl == "torch" else torch.device("cpu")
        ps = [torch.nn.Parameter(x.clone().to(param_dtype or dtype).to(device)) for x in init]
        params = ps if groups is None else [dict(params=[ps[i] for i in idx], **g) for idx, g in groups]
        opt = st.Optimizer(params, spec=spec, implementation=impl, **kw)
        for gs in grads_for(shapes, steps, seed, dtype):
            for p, g in zip(ps, gs):
                p.grad = g.to(grad_dtype or param_dtype or dtype).to(device)
            opt.step(lambda: torch.tensor(0.5))
        out[impl] = ([p.detach().to("cpu", copy=True) for p in ps], opt)
    return out


@pytest.mark.parametrize(
    "spec",
    [
        "adamw:lr=0.01,clip_norm=0.5",
        "sgd:lr=0.1,momentum=0.9,nesterov=true,weight_decay=0.1,clip_norm=1",
        "normsgd:lr=0.1,clip_norm=0.3",
        "lossprop:lr=0.1",
        "adam:lr=0.01,amsgrad=true,weight_decay=0.1",
        "adam:lr=0.01,debias=horizon",
        "rmsprop:lr=0.01,momentum=0.9,centered=true,weight_decay=0.01",
        "adagrad:lr=0.1,lr_decay=0.01,initial_accumulator_value=0.1",
        "madam:lr=0.01",
        "multiplicative:lr=0.01",
        "nadam:lr=0.01,decoupled_weight_decay=true,weight_decay=0.1",
        "radam:lr=0.01,weight_decay=0.1",
        "ademamix:lr=0.01,t_alpha_beta3=3,weight_decay=0.1",
        "adopt:lr=0.01,clip=none,decoupled_weight_decay=true,weight_decay=0.1",
        "adan:lr=0.01,weight_decay=0.1",
        "muon:lr=0.02,ns_bf16=true",
        "sf-adamw:lr=0.01,warmup_steps=2,weight_decay=0.1",
        "adamw:lr=0.01,cautious=true",
        "lion:lr=0.01,weight_decay=0.1,cautious=true",
        "adopt:lr=0.01,weight_decay=0.1,cautious=true",
        "sgd:lr=0.1,momentum=0.9,cautious=true",
        "prodigy:weight_decay=0.1,use_bias_correction=true,clip_norm=0.5",
        "prodigy:beta1=0,decouple=false,weight_decay=0.1,growth_rate=1.2,cautious=true",
    ],
)
def test_rules_and_global_keys_on_several_tensors(spec):
    shapes = [(5, 3), (3, 7), (4, 4)] if spec.startswith("muon") else [(5, 3), (7,), (2, 2, 2)]
    out = both(spec, shapes)
    # On a GPU, Muon's bfloat16 iteration runs bfloat16 products (the same roundings, another
    # order of accumulation): one bfloat16 unit in the last place of a step of lr = 0.02.
    tol = 1e-3 if "ns_bf16" in spec and DEVICE.type != "cpu" else 1e-12
    for pr, pt in zip(out["rust"][0], out["torch"][0]):
        assert torch.allclose(pt, pr, rtol=tol, atol=tol), (pt - pr).abs().max()


def test_groups_with_their_own_keys():
    groups = [([0, 1], {"lr": 0.05}), ([2], {"weight_decay": 0.3, "beta1": 0.5})]
    out = both("adamw:lr=0.01", [(4, 3), (5,), (6,)], groups=groups)
    for pr, pt in zip(out["rust"][0], out["torch"][0]):
        assert torch.allclose(pt, pr, rtol=1e-12, atol=1e-12)


def test_bf16_state_has_the_rust_kernels_bits():
    # An EMA with β = 1/2 and a step of 1/4 compute the same float32 values in both engines
    # (exact products, one rounding per sum), so that what is compared is the narrowing: the
    # same stochastic-rounding bits (seed, step, tensor, buffer, element), or round to nearest.
    for rounding in ("stochastic", "nearest"):
        spec = f"ema-momentum:lr=0.25,beta=0.5,state_dtype=bf16,rounding={rounding},sr_seed=7"
        out = both(spec, [(300,), (17, 5)], steps=5, dtype=torch.float32)
        (pr, opt_r), (pt, opt_t) = out["rust"], out["torch"]
        for a, b in zip(pr, pt):
            assert torch.equal(a, b)
        for i in range(2):
            sr, stt = opt_r.state_dict()["state"][i], opt_t.state_dict()["state"][i]
            assert stt["exp_avg"].dtype == torch.bfloat16
            assert torch.equal(sr["exp_avg"].float(), stt["exp_avg"].float().cpu()), rounding
    # Every rule with bf16 state agrees to the state's own precision.
    out = both("adamw:lr=0.01,state_dtype=bf16", [(300,), (17, 5)], steps=5, dtype=torch.float32)
    for a, b in zip(out["rust"][0], out["torch"][0]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bf16_parameters_with_and_without_master_weights():
    # One exact product and one rounding per step: the same float32 values in both engines,
    # so the parameters' stochastic rounding (its own stream) gives the same bits.
    for extra in ("", ",master_weights=true", ",rounding=nearest"):
        out = both(f"sgd:lr=0.5{extra}", [(300,), (9, 4)], steps=4, dtype=torch.float32,
                   param_dtype=torch.bfloat16, grad_dtype=torch.bfloat16)
        for a, b in zip(out["rust"][0], out["torch"][0]):
            assert a.dtype == b.dtype == torch.bfloat16
            assert torch.equal(a, b), extra


def test_f64_parameters_with_bf16_state_round_through_odd_float32():
    x = torch.tensor([1.0 + 2.0**-8 + 2.0**-40, -(1.0 + 2.0**-8 + 2.0**-40), 1.0 + 2.0**-8], dtype=torch.float64)
    out = torch.empty(3, dtype=torch.bfloat16)
    _foreach.narrow_bf16(x, out, "nearest", None)
    # Round-to-odd keeps the sticky bit: the tie-looking value rounds up, as in float64.
    assert out[0].item() == 1.0 + 2.0**-7 and out[1].item() == -(1.0 + 2.0**-7)
    assert out[2].item() == 1.0  # an exact tie rounds to even


def test_counter_bits_are_the_rust_streams():
    # lowp.rs's published SplitMix64 sequence, and a lowbias32 value computed by hand.
    gamma = 0x9E3779B97F4A7C15
    assert _foreach._splitmix(1234567) == 0x599ED017FB08FC85
    assert _foreach._splitmix((1234567 + gamma) & 0xFFFFFFFFFFFFFFFF) == 0x2C73F08458540FA5
    key = _foreach.stream_key(3, 1, 0, 0)
    bits = _foreach.counter_bits(key, 5, torch.device("cpu"))

    def lowbias32(i):
        x = ((i ^ (key & 0xFFFFFFFF)) + (key >> 32)) & 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    assert bits.tolist() == [lowbias32(i) for i in range(5)]


def test_nonfinite_gradients_are_refused_or_skipped_as_by_the_rust_engine():
    for impl in ("rust", "torch"):
        device = DEVICE if impl == "torch" else torch.device("cpu")
        ones = torch.ones(3, dtype=torch.float64, device=device)
        p = torch.nn.Parameter(ones.clone())
        opt = st.Optimizer([p], spec="adam:lr=0.1", implementation=impl)
        p.grad = torch.tensor([1.0, float("nan"), 0.0], dtype=torch.float64, device=device)
        with pytest.raises(sgdlab.SgdlabError, match=r"gradient of 0\.0 at index 1"):
            opt.step()
        assert torch.equal(p, ones) and opt.steps == 0
        opt = st.Optimizer([p], spec="adam:lr=0.1", skip_nonfinite=True, implementation=impl)
        opt.step()
        assert opt.skipped == 1 and opt.steps == 0 and torch.equal(p, ones)


def test_meta_tensors_construct_and_step():
    for spec in ["adamw:lr=0.01", "adamw:lr=0.01,clip_norm=1,state_dtype=bf16", "muon", "sf-adamw", "lion:cautious=true"]:
        p = torch.nn.Parameter(torch.empty(4, 3, device="meta"))
        opt = st.Optimizer([p], spec=spec)
        p.grad = torch.empty(4, 3, device="meta")
        opt.step()
        opt.step()
        assert opt.implementation == "torch" and opt.steps == 2
        assert all(v.device.type == "meta" for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.dim())
    model = torch.nn.Linear(8, 4, device="meta")
    opt = st.AdamW(model.parameters(), lr=1e-3)
    model(torch.empty(2, 8, device="meta")).sum().backward()
    opt.step()
    assert opt.steps == 1


def test_torch_engine_state_dict_round_trip_and_pickle():
    shapes = [(5, 3), (7,)]
    data = grads_for(shapes, 6)
    ps = [torch.nn.Parameter(torch.ones(s, dtype=torch.float64)) for s in shapes]
    opt = st.Optimizer(ps, spec="nadam:lr=0.01,state_dtype=bf16", implementation="torch")
    for gs in data[:3]:
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    snap = [p.detach().clone() for p in ps]
    for gs in data[3:]:
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
    ps2 = [torch.nn.Parameter(s.clone()) for s in snap]
    opt2 = st.Optimizer(ps2, spec="nadam:lr=0.01,state_dtype=bf16")
    opt2.load_state_dict(saved)
    assert opt2.implementation == "torch" and opt2.steps == 3
    for gs in data[3:]:
        for p, g in zip(ps2, gs):
            p.grad = g
        opt2.step()
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="torch engine's"):
        st.Optimizer(ps2, spec="nadam:lr=0.01", implementation="rust").load_state_dict(saved)


def test_non_contiguous_and_channels_last_parameters_step_on_both_engines():
    conv = torch.nn.Conv2d(3, 4, 3).double().to(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    ref = torch.nn.Conv2d(3, 4, 3).double()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    results = []
    for impl in ("rust", "torch"):
        model = copy.deepcopy(conv)
        opt = st.AdamW(model.parameters(), lr=0.01, implementation=impl)
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        results.append(model.weight.detach().contiguous())
        assert not model.weight.is_contiguous()  # still channels_last
    tref = torch.optim.AdamW(ref.parameters(), lr=0.01)
    for _ in range(3):
        tref.zero_grad()
        ref(x).square().mean().backward()
        tref.step()
    for r in results:
        assert torch.allclose(r, ref.weight.detach(), rtol=1e-12, atol=1e-14)


def test_torch_compile_of_the_torch_engine_step():
    model = torch.nn.Linear(6, 3).double().to(DEVICE)
    ref = copy.deepcopy(model)
    opt = st.AdamW(model.parameters(), lr=0.01, implementation="torch", check_finite=False)
    tref = torch.optim.AdamW(ref.parameters(), lr=0.01)
    x = torch.randn(4, 6, dtype=torch.float64, device=DEVICE)

    # The graph capture (the suite's CPU has no compiler for inductor's C++ on every
    # machine); a GPU run compiles with inductor.
    @torch.compile(backend="eager" if DEVICE.type == "cpu" else "inductor")
    def train_step():
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    for _ in range(3):
        train_step()
        tref.zero_grad()
        ref(x).square().mean().backward()
        tref.step()
    assert torch.allclose(model.weight, ref.weight, rtol=1e-12, atol=1e-14)


def test_the_first_step_may_run_under_torch_compile_on_either_engine():
    for impl in ("rust", "torch"):
        model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        ref = copy.deepcopy(model)
        opt = st.AdamW(model.parameters(), lr=0.01, implementation=impl)
        tref = torch.optim.AdamW(ref.parameters(), lr=0.01)
        x = torch.randn(5, 6)

        @torch.compile(backend="eager")
        def train_step():
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            return loss

        for _ in range(3):
            train_step()
            tref.zero_grad()
            ref(x).square().mean().backward()
            tref.step()
        for a, b in zip(model.parameters(), ref.parameters()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), impl


def test_the_benchmark_scripts_run(tmp_path):
    # The device benchmarks of the docs, at a toy size on the CPU (no compiler needed).
    import subprocess
    import sys

    benches = CONFORMANCE.parents[3] / "sgdlab-py" / "benches"
    out = subprocess.run(
        [sys.executable, benches / "bench_torch.py", "--device", "cpu", "--params", "2K", "--tensors", "4",
         "--rounds", "2", "--warmup", "1", "--no-compile", "--muon", "--muon-shape", "8x4", "--muon-count", "2"],
        check=True, capture_output=True, text=True,
    ).stdout
    report = json.loads(out[out.index("\n{") + 1:])
    assert set(report["adamw"]["2K"]["speed_vs_reference"]) >= {
        "torch.optim.AdamW(fused=True)", "sgdlab.torch.AdamW (torch engine, eager)", "sgdlab.torch.AdamW (Rust kernels)"}
    out = subprocess.run(
        [sys.executable, benches / "compile_report.py", "--device", "cpu", "--tensors", "3", "--backend", "eager"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert json.loads(out)["stats"]["unique_graphs"] >= 1
