"""Shared fixtures: the repository's conformance files and the sgdlab command-line tool."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
CONFORMANCE = ROOT / "crates" / "sgdlab-optim" / "tests" / "data" / "conformance"
DATA = ROOT / "data"


@pytest.fixture(scope="session")
def sgdlab_bin() -> pathlib.Path:
    """The CLI built from this checkout: $SGDLAB_BIN, or `cargo build --release` (the test
    script sets SGDLAB_BIN after building it)."""
    env = os.environ.get("SGDLAB_BIN")
    if env:
        path = pathlib.Path(env)
        assert path.is_file(), f"SGDLAB_BIN={env} is not a file"
        return path
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "sgdlab-cli"], cwd=ROOT, check=True
    )
    return ROOT / "target" / "release" / "sgdlab"
