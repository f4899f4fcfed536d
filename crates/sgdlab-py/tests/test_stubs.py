"""The type stubs of the extension module (``sgdlab/_core.pyi``) match it: mypy's stubtest
compares every name, signature and class of the built ``sgdlab._core`` with the stub."""

import subprocess
import sys


def test_the_stubs_match_the_extension_module(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "sgdlab._core"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # mypy's cache goes there, not into the source tree
    )
    assert out.returncode == 0, out.stdout + out.stderr
