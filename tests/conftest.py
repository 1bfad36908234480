"""Shared fixtures: a session isolated from the user's folders and GPU, a tiny model, and guards
against leaked processes and unexpected log records (tests/logfail.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.logfail import fail_on_unexpected_logs  # noqa: F401  (autouse: every folder's tests)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Slow CI machines get proportionally longer waits; every wait in the suite goes through this.
TIMEOUT_SCALE = float(os.environ.get("CANVAS_CHAT_TIMEOUT_SCALE", "1"))
# CI (.ci/run) sets this: a test that needs a missing system tool fails instead of skipping.
REQUIRE_TOOLS = os.environ.get("CANVAS_CHAT_REQUIRE_TOOLS") == "1"
# Opt-in for a machine with an NVIDIA GPU: the tests then see it (they hold either way).
USE_GPU = os.environ.get("CANVAS_CHAT_TEST_GPU") == "1"

# Every variable through which a library finds a per-user folder to write into.
USER_FOLDER_VARIABLES = {
    "HOME": "home",
    "XDG_CONFIG_HOME": "home/.config",
    "XDG_CACHE_HOME": "home/.cache",
    "XDG_DATA_HOME": "home/.local/share",
    "XDG_STATE_HOME": "home/.local/state",
    "CANVAS_CHAT_HOME": "canvas-chat",
    "HF_HOME": "hf",
    "HF_HUB_CACHE": "hf/hub",
    "HUGGINGFACE_HUB_CACHE": "hf/hub",
    "HF_XET_CACHE": "hf/xet",
    "HF_ASSETS_CACHE": "hf/assets",
    "MPLCONFIGDIR": "matplotlib",
    "TRITON_CACHE_DIR": "triton",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
}
ISOLATED_BASE: Path | None = None  # set once per session by pytest_configure
ORIGINAL_ENVIRONMENT: dict[str, str | None] = {}  # what those variables were before
# Credentials that must never reach a test's hub client or child process.
CREDENTIAL_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")


def isolate_user_folders(base: Path) -> dict[str, str]:
    """Points every per-user folder variable into `base` and drops hub credentials."""
    values = {name: str(base / relative) for name, relative in USER_FOLDER_VARIABLES.items()}
    for folder in set(values.values()):
        Path(folder).mkdir(parents=True, exist_ok=True)
    os.environ.update(values)
    for name in CREDENTIAL_VARIABLES:
        os.environ.pop(name, None)
    return values


def pytest_configure(config):
    """Isolates the whole session before any fixture (module- and session-scoped ones included)
    starts: no test, child process or library writes into the real user's home or caches."""
    import tempfile

    global ISOLATED_BASE
    ISOLATED_BASE = Path(tempfile.mkdtemp(prefix="canvas-chat-tests-"))
    ORIGINAL_ENVIRONMENT.update({name: os.environ.get(name) for name in USER_FOLDER_VARIABLES})
    isolate_user_folders(ISOLATED_BASE)
    if not USE_GPU:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU-only suite never touches a GPU


def pytest_unconfigure(config):
    import shutil

    if ISOLATED_BASE is not None:
        shutil.rmtree(ISOLATED_BASE, ignore_errors=True)


def timeout_ms(seconds: float) -> int:
    """A wait bound in milliseconds, scaled for slow machines."""
    return int(seconds * 1000 * TIMEOUT_SCALE)


def tool_missing(reason: str) -> None:
    """Skips a test that needs a system tool this machine lacks; under CANVAS_CHAT_REQUIRE_TOOLS=1
    (CI) fails it instead, so a missing tool cannot hide a test."""
    if REQUIRE_TOOLS:
        pytest.fail(f"{reason} (CANVAS_CHAT_REQUIRE_TOOLS=1: missing tools fail)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Gives each test fresh user folders (data, config, logs, Hugging Face caches)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CANVAS_CHAT_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(home / "hf" / "hub"))
    for name in ("CANVAS_CHAT_TEST_FORCE_REPLY", "CANVAS_CHAT_TEST_FAULT", "CANVAS_CHAT_TEST_STEP_DELAY"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny DiffusionGemma folder (canvas 16, 8 denoising steps), built once per session."""
    from tests.tiny_model import build_tiny_model_folder

    return build_tiny_model_folder(tmp_path_factory.mktemp("tiny-model") / "tiny-diffusiongemma")


@pytest.fixture(scope="session")
def tiny_vision_model_dir(tmp_path_factory) -> Path:
    """A tiny DiffusionGemma whose vision tower takes images (70 soft tokens an image)."""
    from tests.tiny_model import build_tiny_vision_model_folder

    return build_tiny_vision_model_folder(tmp_path_factory.mktemp("tiny-vision-model") / "tiny-diffusiongemma-vision")


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
