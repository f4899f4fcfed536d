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
        sgdlab.verify(problems=[12], quick=True)
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
