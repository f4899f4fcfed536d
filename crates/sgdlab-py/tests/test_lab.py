"""sgdlab.verify and sgdlab.audit return what the CLI's --json writes."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import sgdlab
from conftest import DATA


def cli_json(sgdlab_bin, tmp_path, *args):
    out = tmp_path / "out.json"
    run = subprocess.run([sgdlab_bin, *args, "--json", out], capture_output=True, text=True)
    assert run.returncode in (0, 1), run.stderr
    return json.loads(out.read_text())


def test_verify_equals_the_cli(sgdlab_bin, tmp_path):
    cli = cli_json(sgdlab_bin, tmp_path, "verify", "--problem", "2", "--problem", "4", "--quick", "--seed", "7")
    claims = sgdlab.verify(problems=[2, 4], quick=True, seed=7)
    assert claims == cli["claims"]
    assert {c["id"].split(".")[0][0] for c in claims} == {"2", "4"}
    assert all(c["passed"] for c in claims)
    # One problem as an int; another seed gives other measurements.
    other = sgdlab.verify(problems=2, quick=True, seed=8)
    assert [c["id"] for c in other] == [c["id"] for c in claims if c["id"].startswith("2")]
    assert other != [c for c in claims if c["id"].startswith("2")]


def test_verify_refuses_unknown_problems():
    with pytest.raises(sgdlab.SgdlabError, match="problem"):
        sgdlab.verify(problems=[14], quick=True)
    with pytest.raises(sgdlab.SgdlabError, match="problem"):
        sgdlab.verify(problems=[-1], quick=True)


def test_audit_equals_the_cli_from_a_file_and_from_an_array(sgdlab_bin, tmp_path):
    opts = ["normsgd:lr=0.01,eps=1", "adam"]
    args = ["audit", "--data", str(DATA / "points.csv"), "--model", "points"]
    for o in opts:
        args += ["--opt", o]
    cli = cli_json(sgdlab_bin, tmp_path, *args)
    assert sgdlab.audit(DATA / "points.csv", model="points", opts=opts) == cli
    rows = np.loadtxt(DATA / "points.csv", delimiter=",", ndmin=2)
    assert sgdlab.audit(rows, model="points", opts=opts) == cli
    # Problem 6's answer: normalised SGD's fixed point is not the mean (1), Adam's drift is.
    assert cli["minimizer"] == [1.0]
    assert cli["optimizers"][0]["consistent"] is False


def test_audit_regression_options_equal_the_cli(sgdlab_bin, tmp_path):
    cli = cli_json(
        sgdlab_bin, tmp_path, "audit", "--data", str(DATA / "regression.csv"), "--model", "linreg",
        "--opt", "sgd:lr=0.01", "--no-bias", "--steps", "2000", "--seed", "3",
    )
    got = sgdlab.audit(DATA / "regression.csv", model="linreg", opts="sgd:lr=0.01", bias=False, steps=2000, seed=3)
    assert got == cli


def test_audit_refuses_bad_input():
    with pytest.raises(sgdlab.SgdlabError, match="audit model"):
        sgdlab.audit(np.ones((3, 2)), model="nosuch")
    with pytest.raises(sgdlab.SgdlabError, match="optimizer"):
        sgdlab.audit(np.ones((3, 1)), opts=["nosuch"])
    with pytest.raises(ValueError, match="2-D"):
        sgdlab.audit(np.ones(3))
    with pytest.raises(sgdlab.SgdlabError, match="steps"):
        sgdlab.audit(np.ones((3, 1)), steps=10)
    with pytest.raises(ValueError, match="feature column"):
        sgdlab.audit(np.ones((3, 1)), model="linreg")
    with pytest.raises(sgdlab.SgdlabError):
        sgdlab.audit("/no/such/file.csv")


# Foreign optimizers: torch.optim classes and a researcher's own, audited as sgdlab's rules.

POINTS = np.array([[0.0], [0.0], [3.0]])  # problem 6's points: mean 1, median 0


def test_torch_optimizers_audit_as_the_library_rules_they_equal():
    torch = pytest.importorskip("torch")
    import functools

    report = sgdlab.audit(
        POINTS,
        opts=[
            "adam:lr=0.01",
            functools.partial(torch.optim.Adam, lr=0.01),
            "rmsprop:lr=0.01,alpha=0.99",
            functools.partial(torch.optim.RMSprop, lr=0.01, alpha=0.99),
        ],
        steps=4000,
        burn_in=1000,
        seed=5,
    )
    ours_adam, torch_adam, ours_rms, torch_rms = report["optimizers"]
    assert torch_adam["optimizer"] == "torch.optim.Adam(lr=0.01)"
    assert torch_rms["optimizer"] == "torch.optim.RMSprop(lr=0.01, alpha=0.99)"
    for ours, theirs in [(ours_adam, torch_adam), (ours_rms, torch_rms)]:
        # Within the standard errors, and in fact to rounding: the
        # same example streams drive two implementations of the same rule.
        se = np.hypot(ours["drift_stderr"], theirs["drift_stderr"])
        assert np.all(np.abs(np.subtract(ours["drift"], theirs["drift"])) < 4 * se)
        np.testing.assert_allclose(theirs["drift"], ours["drift"], rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(theirs["fixed_point"], ours["fixed_point"], rtol=1e-9)
        np.testing.assert_allclose(theirs["extrapolated"], ours["extrapolated"], rtol=1e-9)
        assert theirs["method"] == "simulation"
    # RMSProp's drift at the minimiser is 6c's bias, far from 0: inconsistent.
    assert torch_rms["drift"][0] < -0.003 and not torch_rms["consistent"]


def test_a_researchers_own_optimizer_in_ten_lines():
    torch = pytest.importorskip("torch")

    class SignSGD(torch.optim.Optimizer):
        def __init__(self, params, lr=0.01):
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self):
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(torch.sign(p.grad), alpha=-group["lr"])

    report = sgdlab.audit(POINTS, opts=[SignSGD], steps=4000, burn_in=500, seed=2)
    (audit,) = report["optimizers"]
    assert audit["optimizer"].endswith("SignSGD")
    # A sign update drifts by −E[sign g] = −1/3 at the mean (claim 10i.lion) and settles
    # at the median: within its standard errors of 0 once extrapolated to lr → 0.
    assert audit["drift"][0] == pytest.approx(-1 / 3, abs=1e-12)
    assert not audit["consistent"]
    assert abs(audit["extrapolated"][0]) < 0.05
    assert abs(audit["fixed_point"][0] - 1.0) > 0.9


def test_foreign_optimizers_that_fail_say_why():
    torch = pytest.importorskip("torch")

    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        sgdlab.audit(POINTS, opts=[lambda params: "adam"], steps=100)
    with pytest.raises(TypeError, match="spec string or a torch"):
        sgdlab.audit(POINTS, opts=[3.5], steps=100)

    class Broken(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("my optimizer is broken")

    with pytest.raises(RuntimeError, match="my optimizer is broken"):
        sgdlab.audit(POINTS, opts=[lambda p: Broken(p, lr=0.1)], steps=100)

    class NoLr(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})

    with pytest.raises(ValueError, match="no learning rate"):
        sgdlab.audit(POINTS, opts=[NoLr], steps=100)
    with pytest.raises(sgdlab.SgdlabError, match="lr must be > 0"):
        sgdlab.audit(POINTS, opts=[lambda p: torch.optim.SGD(p, lr=0.0)], steps=100)


def test_state_kept_in_param_groups_is_restored_between_probes():
    torch = pytest.importorskip("torch")

    class GroupCounter(torch.optim.SGD):
        """SGD whose step length grows with a count kept in its param group."""

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                group["count"] = group.get("count", 0) + 1
                for p in group["params"]:
                    p.add_(p.grad, alpha=-group["lr"] * group["count"])

    from sgdlab._foreign import TorchStepper

    stepper = TorchStepper(lambda p: GroupCounter(p, lr=0.1), 1)
    stepper.step(np.array([1.0]), np.array([1.0]), 0.5, 0.0)
    stepper.save()
    for _ in range(3):
        stepper.step(np.array([1.0]), np.array([1.0]), 0.5, 1.0)
        stepper.restore()
    assert stepper.optimizer.param_groups[0]["count"] == 1
    # Each probe starts from the saved count: its step is lr·2, whatever came before.
    out = stepper.step(np.array([1.0]), np.array([1.0]), 0.5, 1.0)
    assert out[0] == pytest.approx(1.0 - 0.1 * 2)
