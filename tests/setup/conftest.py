"""Fixtures for the first-run tests: a local fake Hub, a fake nvidia-smi, no way out to the internet."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from engine.hub import REAL_MODEL_ID
from tests.gui.conftest import fail_on_qt_warnings  # noqa: F401  (same discipline; log records: tests/logfail.py)
from tests.setup.hub_server import FakeHub


@pytest.fixture(autouse=True)
def no_real_hub(monkeypatch):
    """Any download a test starts without the fake Hub goes to a closed local port, never online."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def fake_hub(tiny_model_dir):
    """The tiny model served as google/diffusiongemma-26B-A4B-it on 127.0.0.1."""
    with FakeHub(REAL_MODEL_ID, tiny_model_dir, lifetime_s=120) as hub:
        yield hub


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """Puts an `nvidia-smi` first on PATH that prints the given CSV (or fails/hangs)."""

    def install(csv: str = "", *, exit_code: int = 0, stderr: str = "", hang_s: float = 0.0, no_compute_cap: bool = False):
        bin_dir = tmp_path / "fake-bin"
        bin_dir.mkdir(exist_ok=True)
        script = bin_dir / "nvidia-smi"
        script.write_text(
            f"#!{sys.executable}\n"
            "import sys, time\n"
            f"time.sleep({hang_s!r})\n"
            f"if {no_compute_cap!r} and any('compute_cap' in a for a in sys.argv):\n"
            "    print('Field \"compute_cap\" is not a valid field to query.'); sys.exit(2)\n"
            f"sys.stdout.write({csv!r})\n"
            f"sys.stderr.write({stderr!r})\n"
            f"sys.exit({exit_code})\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
        return script

    return install


@pytest.fixture
def no_nvidia_smi(tmp_path, monkeypatch):
    """A PATH without nvidia-smi (the CI machines have none anyway; this makes it certain)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty) + os.pathsep + os.path.dirname(sys.executable))
    return empty


def cached_files(cache_root: Path) -> list[str]:
    return sorted(p.relative_to(cache_root).as_posix() for p in cache_root.rglob("*") if p.is_file())
