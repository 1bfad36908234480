"""The Windows installer as it ships: built on Linux with makensis, checked with `file` and `7z`,
and (opt-in, CANVAS_CHAT_WINE_SMOKE=1) installed, upgraded and uninstalled under wine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, TIMEOUT_SCALE, tool_missing

INSTALLER = REPO_ROOT / "installer"
VERSION = re.search(r'(?m)^version = "([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")).group(1)
DOWNLOADS = INSTALLER / "build" / "downloads"

pytestmark = pytest.mark.slow


def wine64() -> str | None:
    """Debian's wine64 (what installer/wine_smoke_test.sh and .ci/run look for)."""
    return shutil.which("wine64") or ("/usr/lib/wine/wine64" if Path("/usr/lib/wine/wine64").exists() else None)


@pytest.fixture(scope="module", autouse=True)
def build_tools():
    """makensis, 7z and file, and the pinned uv.exe wheel (downloaded once, then cached)."""
    missing = [tool for tool in ("makensis", "7z", "file") if shutil.which(tool) is None]
    if missing:
        tool_missing(f"{', '.join(missing)} missing: apt-get install nsis p7zip-full file")
    pin = re.search(r"(?m)^uv==(\S+)", (INSTALLER / "uv-windows.txt").read_text(encoding="utf-8")).group(1)
    if not (DOWNLOADS / f"uv-{pin}-py3-none-win_amd64.whl").exists():
        # What build.sh would do; offline and not cached, the build cannot run at all.
        fetch = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "--platform", "win_amd64", "--require-hashes",
             "-r", str(INSTALLER / "uv-windows.txt"), "-d", str(DOWNLOADS)],
            capture_output=True, text=True, timeout=300 * TIMEOUT_SCALE,
        )
        if fetch.returncode != 0:
            tool_missing(f"uv {pin} for Windows is not in {DOWNLOADS} and PyPI cannot be reached: {fetch.stderr.strip()[-300:]}")


def _build(out_dir: Path, *extra: str) -> Path:
    proc = subprocess.run(
        ["bash", str(INSTALLER / "build.sh"), "--out", str(out_dir), *extra],
        capture_output=True,
        text=True,
        timeout=900 * TIMEOUT_SCALE,
        # The interpreter running the tests builds the wheel, not whatever python3 is on PATH.
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (setup,) = out_dir.glob("CanvasChat-Setup-*.exe")
    return setup


@pytest.fixture(scope="module")
def setup_exe(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("installer"))


@pytest.fixture(scope="module")
def payload(setup_exe, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("payload")
    subprocess.run(["7z", "x", "-y", f"-o{folder}", str(setup_exe)], capture_output=True, check=True, timeout=300)
    return folder


def test_output_is_a_64_bit_windows_executable_named_for_the_version(setup_exe):
    assert setup_exe.name == f"CanvasChat-Setup-{VERSION}.exe"
    kind = subprocess.run(["file", "-b", str(setup_exe)], capture_output=True, text=True, check=True).stdout
    assert kind.startswith("PE32+ executable") and "x86-64" in kind, kind
    # NSIS cannot carry more than ~2 GB; ours carries uv, not torch.
    assert setup_exe.stat().st_size < 60 * 1024**2


def test_payload_holds_uv_the_app_the_bootstrap_and_the_pins(setup_exe):
    listing = subprocess.run(["7z", "l", str(setup_exe)], capture_output=True, text=True, check=True).stdout
    assert "NSIS-3 Unicode 64-bit" in listing
    for name in (
        "uv/uv.exe",
        f"payload/canvas_chat-{VERSION}-py3-none-any.whl",
        "bootstrap.py",
        "payload/requirements.txt",
        "payload/requirements-torch-cu128.txt",
        "payload/requirements-torch-cpu.txt",
        "canvas-chat.ico",
        "Uninstall.exe",
    ):
        assert re.search(rf"\s{re.escape(name)}$", listing, re.MULTILINE), f"{name} missing from:\n{listing}"


def test_payload_files_are_the_ones_in_the_repo(payload):
    assert (payload / "bootstrap.py").read_bytes() == (INSTALLER / "bootstrap.py").read_bytes()
    for pins in ("requirements.txt", "requirements-torch-cu128.txt", "requirements-torch-cpu.txt"):
        assert (payload / "payload" / pins).read_bytes() == (INSTALLER / "pins" / pins).read_bytes()
    uv_exe = subprocess.run(["file", "-b", str(payload / "uv" / "uv.exe")], capture_output=True, text=True).stdout
    assert uv_exe.startswith("PE32+ executable") and "x86-64" in uv_exe
    assert (payload / "canvas-chat.ico").read_bytes()[:4] == b"\x00\x00\x01\x00"


def test_app_wheel_carries_the_packages_and_a_windowed_launcher(payload):
    (wheel,) = (payload / "payload").glob("canvas_chat-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert any(n.startswith("app/") for n in names) and any(n.startswith("engine/") for n in names)
    gui = entry_points.split("[gui_scripts]")[1].split("[")[0]
    assert "canvas-chat = app.__main__:main" in gui, "the Start-menu shortcut needs a launcher without a console"


@pytest.mark.skipif(os.environ.get("CANVAS_CHAT_WINE_SMOKE") != "1", reason="wine smoke test is opt-in: CANVAS_CHAT_WINE_SMOKE=1")
def test_wine_silent_install_upgrade_uninstall(setup_exe, tmp_path):
    if wine64() is None:
        tool_missing("wine64 missing: apt-get install wine64 wine")
    newer = _build(tmp_path / "newer", "--version", "99.0.0", "--fast")
    proc = subprocess.run(
        ["bash", str(INSTALLER / "wine_smoke_test.sh"), str(setup_exe), str(newer)],
        capture_output=True,
        text=True,
        timeout=600 * TIMEOUT_SCALE,
    )
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "FAIL" not in proc.stdout
