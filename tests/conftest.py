"""Shared fixtures: isolated user folders, a tiny model, and guards against leaked processes and
unexpected log records (tests/logfail.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.logfail import fail_on_unexpected_logs  # noqa: F401  (autouse: every folder's tests)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Keep every test away from a hub and from the real user's caches.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Slow CI machines get proportionally longer waits; every wait in the suite goes through this.
TIMEOUT_SCALE = float(os.environ.get("CANVAS_CHAT_TIMEOUT_SCALE", "1"))


def timeout_ms(seconds: float) -> int:
    """A wait bound in milliseconds, scaled for slow machines."""
    return int(seconds * 1000 * TIMEOUT_SCALE)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Points every user folder (data, config, logs, caches) at a fresh temporary folder."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CANVAS_CHAT_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    for name in ("CANVAS_CHAT_TEST_FORCE_REPLY", "CANVAS_CHAT_TEST_FAULT", "CANVAS_CHAT_TEST_STEP_DELAY"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny DiffusionGemma folder (canvas 16, 8 denoising steps), built once per session."""
    from tests.tiny_model import build_tiny_model_folder

    return build_tiny_model_folder(tmp_path_factory.mktemp("tiny-model") / "tiny-diffusiongemma")


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Fails a test that leaves a child process (a worker, a download) running."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leaked = [p for p in me.children(recursive=True) if p.pid not in before]
    if not leaked:
        return
    _, alive = psutil.wait_procs(leaked, timeout=5 * TIMEOUT_SCALE)
    for proc in alive:
        proc.kill()
    if alive:
        pytest.fail(f"test leaked child processes: {[p.pid for p in alive]}")


def python_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python process that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


PYTHON = sys.executable
