"""On Windows the app's child processes start with the windowed interpreter: no console window."""

from __future__ import annotations

import sys

import pytest

from app.worker.engine_client import worker_command
from app.setup.download import ModelDownload


@pytest.fixture
def windows_venv(tmp_path, monkeypatch):
    """sys.executable as in the installed app: env\\Scripts\\python.exe with pythonw.exe beside it."""
    scripts = tmp_path / "env" / "Scripts"
    scripts.mkdir(parents=True)
    for name in ("python.exe", "pythonw.exe"):
        (scripts / name).write_bytes(b"MZ")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(sys, "executable", str(scripts / "python.exe"))
    return scripts


def test_the_worker_starts_with_the_windowed_interpreter_on_windows(windows_venv):
    assert worker_command() == [str(windows_venv / "pythonw.exe"), "-m", "engine", "serve"]


def test_a_model_download_starts_with_the_windowed_interpreter_on_windows(windows_venv, qapp):
    download = ModelDownload("google/some-model", revision="main", cache_dir=windows_venv / "cache")
    assert download.command() == [
        str(windows_venv / "pythonw.exe"), "-m", "app.setup.download_child",
        "--repo", "google/some-model", "--revision", "main", "--cache-dir", str(windows_venv / "cache"),
    ]


def test_already_windowed_or_other_systems_keep_their_interpreter(windows_venv, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(windows_venv / "pythonw.exe"))
    assert worker_command()[0] == str(windows_venv / "pythonw.exe")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    assert worker_command() == ["/usr/bin/python3", "-m", "engine", "serve"]
