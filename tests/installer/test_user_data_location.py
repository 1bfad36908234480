"""The uninstaller's "delete user data?" question must cover every folder the app writes to on Windows."""

from __future__ import annotations

import re
from pathlib import Path

import platformdirs
import platformdirs.windows

from tests.conftest import REPO_ROOT


def test_every_app_folder_on_windows_is_under_the_folder_the_uninstaller_offers_to_delete(tmp_path, monkeypatch):
    nsi = (REPO_ROOT / "installer" / "canvas-chat.nsi").read_text(encoding="utf-8")
    offered = re.search(r'!define USER_DATA_DIR "\$LOCALAPPDATA\\(\w+)"', nsi).group(1)
    local, roaming = tmp_path / "Local", tmp_path / "Roaming"
    folders = {"CSIDL_LOCAL_APPDATA": local, "CSIDL_APPDATA": roaming}
    # Resolve engine.paths the way it resolves on Windows, with the known folders in tmp_path.
    monkeypatch.setattr(platformdirs.windows, "get_win_folder", lambda csidl: str(folders[csidl]))
    monkeypatch.setattr(platformdirs, "PlatformDirs", platformdirs.windows.Windows)
    monkeypatch.delenv("CANVAS_CHAT_HOME")
    from engine import paths

    for where in (paths.data_dir(), paths.config_dir(), paths.log_dir(), paths.models_dir()):
        assert Path(where).is_relative_to(local / offered), f"{where} is outside %LOCALAPPDATA%\\{offered}"
    # ...and none of it inside the install folder that upgrades rewrite.
    install_dir = re.search(r'InstallDir "\$LOCALAPPDATA\\([^"]+)"', nsi).group(1).replace("\\", "/")
    assert not Path(paths.data_dir()).is_relative_to(local / install_dir)
