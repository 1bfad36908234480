"""Started as the Windows shortcut starts it (pythonw: no stdout, no stderr) the app runs and logs to its files."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import PYTHON, TIMEOUT_SCALE, python_env

# pythonw.exe runs a gui-script with these three set to None.
AS_PYTHONW = "import sys; sys.stdin = sys.stdout = sys.stderr = None\n"


def run_windowed(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-c", AS_PYTHONW + code, *args],
        env=python_env(QT_QPA_PLATFORM="offscreen", **env),
        capture_output=True,
        text=True,
        timeout=300 * TIMEOUT_SCALE,
    )


@pytest.mark.slow
def test_the_entry_point_without_stdout_or_stderr_runs_and_logs_to_its_log_file(tiny_model_dir, isolated_home):
    result = run_windowed(
        "from app.__main__ import main; raise SystemExit(main())",
        "--self-test", "--model", str(tiny_model_dir), "--prompt", "Are you there?",
        CANVAS_CHAT_TEST_FORCE_REPLY="Here I am.",
    )
    log = (isolated_home / "logs" / "canvas-chat.log").read_text(encoding="utf-8")
    assert result.returncode == 0, log + result.stderr
    assert "Canvas Chat starting" in log and "self-test ended with status 0" in log
    assert "engine worker" in log  # the worker's own log lines, forwarded into the app's log


def test_without_a_console_the_crash_handler_writes_to_a_file_in_the_log_folder(isolated_home):
    result = run_windowed("import faulthandler, app.__main__ as m; m.prepare_streams(); faulthandler._sigsegv()")
    assert result.returncode != 0
    crash_log = (isolated_home / "logs" / "crash.log").read_text(encoding="utf-8")
    assert "Canvas Chat started at" in crash_log
    assert "Fatal Python error: Segmentation fault" in crash_log
