"""Hostile and careless use of the Python package: every case ends in a correct result or a
Python exception that names the problem — never a silently wrong number, a panic, a crash or a
hang. (docs/src/reliability.md lists the guarantees these tests hold the package to.)"""

from __future__ import annotations

import ctypes
import os
import pickle
import threading

import numpy as np
import pytest
import torch

import sgdlab
import sgdlab.torch as st
from sgdlab import SgdlabError


def stepped(spec="adam", n=4, steps=2):
    p, g = np.ones(n), np.full(n, 0.3)
    opt = sgdlab.Optimizer(spec)
    for _ in range(steps):
        opt.step([p], [g])
    return opt, p, g


# -- silent wrong results ------------------------------------------------------------------


def test_a_step_bumps_the_version_counters_so_autograd_refuses_a_stale_graph():
    for make in (lambda ps: st.SGD(ps, lr=0.1), lambda ps: st.Optimizer(ps, spec="sf-adamw")):
        w = torch.randn(3, 3, requires_grad=True)
        opt = make([w])
        loss = (w**2).sum()
        loss.backward(retain_graph=True)
        version = w._version
        opt.step()
        assert w._version > version
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
    # eval()/train() change the parameters in place too.
    w.grad = torch.ones(3, 3)
    opt.step()
    before = w._version
    opt.eval()
    assert w._version > before
    opt.train()
    assert w._version > before + 1


def test_a_gradient_sharing_memory_with_its_parameter_is_refused_whatever_owns_it():
    buf = bytearray(8 * 64)
    # Two owners of one buffer (numpy sees two bases), and a ctypes array at the same address.
    p = np.frombuffer(buf, dtype=np.float64)
    g = np.frombuffer(buf, dtype=np.float64)[8:]
    raw = (ctypes.c_double * 64).from_buffer(buf)
    via_ctypes = np.ctypeslib.as_array(raw)
    for grad in (np.frombuffer(buf, dtype=np.float64), g, via_ctypes):
        params = [p[: len(grad)]] if len(grad) < len(p) else [p]
        with pytest.raises(SgdlabError, match="share memory"):
            sgdlab.Optimizer("sgd:lr=0.1").step(params, [grad])
    # One gradient overlapping another tensor's parameter; two parameters overlapping.
    a, b = np.ones(8), np.ones(8)
    with pytest.raises(SgdlabError, match="share memory"):
        sgdlab.Optimizer("sgd").step([p[:8], p[4:12]], [a, b])
    with pytest.raises(SgdlabError, match="share memory"):
        sgdlab.Optimizer("sgd").step([a, b], [np.ones(8), a])
    # Adjacent (not overlapping) views of one buffer are fine, and give the copied result.
    q = np.frombuffer(bytearray(8 * 8), dtype=np.float64)
    q[:4], q[4:] = 1.0, 0.5
    sgdlab.Optimizer("sgd:lr=0.1").step([q[:4]], [q[4:]])
    assert np.array_equal(q[:4], np.full(4, 0.95))
    # Two gradients may share memory (both are only read).
    x, y, shared = np.ones(4), np.ones(4), np.full(4, 0.5)
    sgdlab.Optimizer("sgd:lr=0.1").step([x, y], [shared, shared])
    assert np.array_equal(x, y)
    # torch: `p.grad = p.detach()`.
    w = torch.ones(16, requires_grad=True)
    opt = st.SGD([w], lr=0.1)
    w.grad = w.detach()
    with pytest.raises(SgdlabError, match="share memory"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(16))


def test_a_parameter_whose_layout_changed_is_not_stepped_through_a_stale_view():
    w = torch.randn(3, 3, requires_grad=True)
    opt = st.SGD([w], lr=0.5)
    w.grad = torch.ones(3, 3)
    opt.step()
    # Same pointer and shape, other strides: the step runs on a contiguous copy and writes
    # it back, exactly as torch.optim steps the transposed tensor.
    w.data = w.data.t()
    ref = w.detach().clone().requires_grad_()
    w.grad, ref.grad = torch.arange(9.0).reshape(3, 3), torch.arange(9.0).reshape(3, 3)
    opt.step()
    torch.optim.SGD([ref], lr=0.5).step()
    assert torch.equal(w.detach(), ref.detach()) and not w.is_contiguous()
    # Made contiguous again (a new storage), it steps exactly as torch.optim.
    w.data = w.data.contiguous()
    ref = w.detach().clone().requires_grad_()
    w.grad, ref.grad = torch.arange(9.0).reshape(3, 3), torch.arange(9.0).reshape(3, 3)
    opt.step()
    torch.optim.SGD([ref], lr=0.5).step()
    assert torch.equal(w.detach(), ref.detach())


@pytest.mark.parametrize("api", ["numpy", "torch"])
def test_schedule_free_eval_mode_survives_save_and_load(api):
    if api == "numpy":
        opt, p, g = stepped("sf-adamw:lr=0.01", steps=3)
        opt.eval_mode([p])
        other = sgdlab.Optimizer.from_bytes(opt.to_bytes())
        q = p.copy()
        assert other.in_eval_mode
        other.train_mode([q])
        opt.train_mode([p])
        assert np.array_equal(p, q)
        other.step([q], [g])
        opt.step([p], [g])
        assert np.array_equal(p, q)
        # Through a state dict and pickling too.
        opt.eval_mode([p])
        via_dict = sgdlab.Optimizer("sgd")
        via_dict.load_state_dict(opt.state_dict())
        assert via_dict.in_eval_mode and pickle.loads(pickle.dumps(opt)).in_eval_mode
    else:
        torch.manual_seed(0)
        w = torch.randn(5, requires_grad=True)
        opt = st.Optimizer([w], spec="sf-adamw:lr=0.01")
        for _ in range(3):
            w.grad = torch.full((5,), 0.3)
            opt.step()
        opt.eval()
        saved = opt.state_dict()
        w2 = w.detach().clone().requires_grad_()
        other = st.Optimizer([w2], spec="sf-adamw:lr=0.01")
        other.load_state_dict(saved)
        other.train()
        opt.train()
        assert torch.equal(w.detach(), w2.detach())


def test_counters_cannot_wrap():
    opt, p, g = stepped()
    sd = opt.state_dict()
    for key, value in (("step", 2**64 - 1), ("skipped", 2**64 - 1), ("step", 2**53 + 1)):
        bad = {"metadata": dict(sd["metadata"]), "buffers": sd["buffers"]}
        bad["metadata"][key] = str(value)
        with pytest.raises(SgdlabError, match="exceed the limit"):
            opt.load_state_dict(bad)
    # At the limit itself a state loads, and the next step is refused, not NaN.
    at = {"metadata": dict(sd["metadata"]), "buffers": sd["buffers"]}
    at["metadata"]["step"] = str(2**53)
    opt.load_state_dict(at)
    before = p.copy()
    with pytest.raises(SgdlabError, match="at most 9007199254740992 steps"):
        opt.step([p], [g])
    assert np.array_equal(p, before)
    points = np.array([[0.0], [0.0], [3.0]])
    for steps in (2**64 - 1, 2**62):
        with pytest.raises(SgdlabError, match="burn-in and steps together"):
            sgdlab.audit(points, model="points", opts=["adam"], steps=steps)
    with pytest.raises(SgdlabError, match="burn-in and steps together"):
        sgdlab.audit(points, model="points", opts=["adam"], steps=1000, burn_in=2**64 - 1000)


@pytest.mark.parametrize("spec", ["normsgd", "sgd:clip_norm=1", "muon:lr=0.1"])
def test_a_huge_finite_gradient_is_not_a_silent_zero_step(spec):
    p, g = np.ones((4, 4)), np.full((4, 4), 1e200)
    opt = sgdlab.Optimizer(spec)
    with pytest.raises(SgdlabError, match="overflows"):
        opt.step([p], [g])
    assert np.array_equal(p, np.ones((4, 4))) and opt.steps == 0
    skipping = sgdlab.Optimizer(spec + ("," if ":" in spec else ":") + "skip_nonfinite=true")
    report = skipping.step([p], [g])
    assert not report["applied"] and skipping.skipped == 1
    # A large gradient whose squares do fit is stepped normally.
    assert sgdlab.Optimizer(spec).step([p], [np.full((4, 4), 1e150)])["applied"]


# -- crashes across the boundary -----------------------------------------------------------


def test_a_panic_arrives_as_an_exception_not_a_panic_exception():
    with pytest.raises(SgdlabError, match="internal error in _panic_for_tests: boom"):
        sgdlab._core._panic_for_tests("boom")


def test_duplicate_names_are_refused_before_anything_changes():
    p, g = [np.ones(2), np.ones(2)], [np.ones(2), np.ones(2)]
    opt = sgdlab.Optimizer("adam")
    with pytest.raises(SgdlabError, match="`x`: occurs twice"):
        opt.step(p, g, names=["x", "x"])
    assert opt.steps == 0 and opt.layout is None
    assert np.array_equal(p[0], np.ones(2))
    # A state whose layout names a tensor twice is refused too.
    opt.step(p, g, names=["x", "y"])
    sd = opt.state_dict()
    sd["metadata"]["layout"] = '[["x",[2]],["x",[2]]]'
    with pytest.raises(SgdlabError, match="occurs twice"):
        sgdlab.Optimizer("sgd").load_state_dict(sd)
    for dump in (opt.to_bytes, lambda: pickle.dumps(opt)):
        dump()


def test_deeply_nested_schedules_in_state_are_refused():
    opt, _, _ = stepped()
    sd = opt.state_dict()
    sd["metadata"]["schedule"] = "prod[" * 8000 + "exp:0.5" + "]" * 8000
    with pytest.raises(SgdlabError, match="nest at most 16 deep"):
        opt.load_state_dict(sd)


def test_loading_never_blocks_or_reads_without_bound(tmp_path):
    with pytest.raises(OSError, match="regular file"):
        sgdlab.Optimizer.load("/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="regular file"):
        sgdlab.Optimizer.load(fifo)  # refused at once, not waited on
    opt, _, _ = stepped()
    path = tmp_path / "adam.safetensors"
    opt.save(path)
    # A sparse terabyte behind a valid header: refused without reading it.
    big = tmp_path / "big.safetensors"
    big.write_bytes(path.read_bytes())
    os.truncate(big, 1 << 40)
    with pytest.raises(SgdlabError, match="longer than its contents"):
        sgdlab.Optimizer.load(big)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(SgdlabError, match="truncated"):
        sgdlab.Optimizer.load(cut)


def test_a_layout_with_millions_of_tensors_is_refused_early():
    opt, _, _ = stepped("sgd")
    sd = opt.state_dict()
    sd["metadata"]["layout"] = "[" + ",".join(f'["t{i}",[]]' for i in range(1_100_000)) + "]"
    with pytest.raises(SgdlabError, match="more than 1048576 tensors"):
        sgdlab.Optimizer("sgd").load_state_dict(sd)


def test_the_arrays_of_a_step_may_be_read_by_other_threads():
    # The documented contract: arrays must not be resized or written during a step; reading
    # them from another thread (the GIL is released) is fine.
    p, g = np.ones(1 << 20, dtype=np.float32), np.full(1 << 20, 0.5, dtype=np.float32)
    opt = sgdlab.Optimizer("adam")
    sums = []
    reader = threading.Thread(target=lambda: sums.extend(float(p.sum()) for _ in range(20)))
    reader.start()
    for _ in range(5):
        opt.step([p], [g])
    reader.join()
    assert opt.steps == 5 and np.isfinite(p).all()


# -- lesser ---------------------------------------------------------------------------------


def test_state_files_carry_a_checksum():
    opt, _, _ = stepped()
    good = opt.to_bytes()
    for where in (-3, len(good) // 2):
        bad = bytearray(good)
        bad[where] ^= 0x01
        with pytest.raises(SgdlabError):
            sgdlab.Optimizer.from_bytes(bytes(bad))
    bad = bytearray(good)
    bad[-3] ^= 0x01
    with pytest.raises(SgdlabError, match="SHA-256 does not match"):
        sgdlab.Optimizer.from_bytes(bytes(bad))
    assert sgdlab.Optimizer.from_bytes(good).to_bytes() == good


def test_hyper_parameters_are_values_never_spliced_text():
    w = torch.randn(3, requires_grad=True)
    opt = st.Optimizer([w], spec="adamw")
    opt.param_groups[0]["lr"] = "0.5,weight_decay=0.5"
    w.grad = torch.ones(3)
    with pytest.raises(TypeError, match="`lr` must be a number"):
        opt.step()
    opt.param_groups[0]["lr"] = 1e-3
    opt.param_groups[0]["debias"] = "none,weight_decay=0.5"
    with pytest.raises(ValueError, match="never spec text"):
        opt.step()
    adam = st.Adam([torch.randn(3, requires_grad=True)])
    adam.param_groups[0]["lr"] = "0.5"
    adam.param_groups[0]["params"][0].grad = torch.ones(3)
    with pytest.raises(TypeError, match="`lr` must be a number"):
        adam.step()
    core = sgdlab.Optimizer("adam", ["b:lr=0.1"])
    core.step([np.ones(2), np.ones(1)], [np.ones(2), np.ones(1)], names=["w", "b"])
    with pytest.raises(SgdlabError, match="one word of the spec grammar"):
        core.set_group_keys(1, {"lr": "0.5,weight_decay=0.5"})


def test_a_forged_active_entry_is_a_clear_error():
    w = torch.randn(3, requires_grad=True)
    opt = st.Adam([w])
    w.grad = torch.ones(3)
    opt.step()
    for forged, needle in (
        ([[0, 5]], "names parameter 0.5"),
        ([[0, 0], [0, 0]], "names a parameter twice|does not match"),
        ([["a", 0]], "not a pair of ints"),
        ("x", "not a list"),
    ):
        sd = opt.state_dict()
        sd["sgdlab"]["active"] = forged
        with pytest.raises(ValueError, match=needle):
            opt.load_state_dict(sd)
