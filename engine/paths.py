"""Every folder Canvas Chat writes to, from platformdirs ("CanvasChat").

`CANVAS_CHAT_HOME` overrides them all (tests, portable installs): data/, config/, logs/ and
models/ become subfolders of it. Nothing else in the GUI or the worker builds a user path by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "CanvasChat"
HOME_ENV = "CANVAS_CHAT_HOME"
DATABASE_NAME = "chats.sqlite3"
SETTINGS_NAME = "settings.json"
LOG_NAME = "canvas-chat.log"
CRASH_LOG_NAME = "crash.log"  # faulthandler's tracebacks when there is no console to show them


def _home_override() -> Path | None:
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Conversations database and other user data."""
    home = _home_override()
    if home is not None:
        return _ensure(home / "data")
    return _ensure(Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)))


def config_dir() -> Path:
    home = _home_override()
    if home is not None:
        return _ensure(home / "config")
    return _ensure(Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)))


def log_dir() -> Path:
    home = _home_override()
    if home is not None:
        return _ensure(home / "logs")
    return _ensure(Path(platformdirs.user_log_dir(APP_NAME, appauthor=False)))


def models_dir() -> Path:
    """Where downloaded or converted models live when the user does not choose a folder."""
    home = _home_override()
    if home is not None:
        return _ensure(home / "models")
    return _ensure(Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "models")


def database_path() -> Path:
    return data_dir() / DATABASE_NAME


def settings_path() -> Path:
    return config_dir() / SETTINGS_NAME


def log_path() -> Path:
    return log_dir() / LOG_NAME


def crash_log_path() -> Path:
    return log_dir() / CRASH_LOG_NAME
