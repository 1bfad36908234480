"""Runs the fused-kernel tests (test_*_interpreted.py) in a child pytest under TRITON_INTERPRET=1."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO_ROOT, python_env

pytest.importorskip("triton", reason="the fused-kernel tests need triton (the `test` extra installs it on Linux)")


def test_fused_nf4_kernels_under_the_triton_interpreter():
    files = sorted(str(p.relative_to(REPO_ROOT)) for p in Path(__file__).parent.glob("test_*_interpreted.py"))
    assert files
    result = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *files],
        cwd=REPO_ROOT, env=python_env(TRITON_INTERPRET="1", OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
