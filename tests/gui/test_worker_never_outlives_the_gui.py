"""The real GUI process killed outright while a reply streams: its worker must not live on (on the GPU)."""

from __future__ import annotations

import subprocess
import time

import psutil
import pytest

from tests.conftest import PYTHON, TIMEOUT_SCALE, python_env

pytestmark = pytest.mark.slow

# Long enough to stream for half a minute at the step delay below: the kill lands mid-reply.
LONG_REPLY = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)


def wait_for(condition, timeout_s: float, what: str) -> None:
    """Polls a condition of another process (there is no signal to wait on across processes)."""
    deadline = time.monotonic() + timeout_s * TIMEOUT_SCALE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # exited; only its reaping is left to init
    except psutil.NoSuchProcess:
        return True


def test_killing_the_gui_mid_reply_ends_its_worker_within_seconds(tiny_model_dir, isolated_home, tmp_path):
    log_file = isolated_home / "logs" / "canvas-chat.log"
    with open(tmp_path / "gui-stderr.txt", "wb") as gui_stderr:
        gui = subprocess.Popen(
            [PYTHON, "-m", "app", "--self-test", "--model", str(tiny_model_dir), "--timeout", "600"],
            env=python_env(
                QT_QPA_PLATFORM="offscreen",
                CANVAS_CHAT_TEST_FORCE_REPLY=LONG_REPLY,
                CANVAS_CHAT_TEST_STEP_DELAY="0.3",
            ),
            stdout=subprocess.DEVNULL,
            stderr=gui_stderr,
        )
    worker = None
    try:
        wait_for(
            lambda: log_file.exists() and "generating a reply" in log_file.read_text(encoding="utf-8"),
            180,
            "the worker to start streaming a reply",
        )
        (worker,) = [
            child for child in psutil.Process(gui.pid).children(recursive=True) if "engine" in child.cmdline()
        ]
        gui.kill()
        gui.wait()
        wait_for(lambda: gone(worker), 10, "the orphaned worker to exit")
    finally:
        if gui.poll() is None:
            gui.kill()
            gui.wait()
        if worker is not None and not gone(worker):
            worker.kill()
    assert "self-test ended" not in log_file.read_text(encoding="utf-8"), "the reply ended before the kill"
