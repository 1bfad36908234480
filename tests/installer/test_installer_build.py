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

pytestmark = pytest.mark.slow


def wine64() -> str | None:
    """Debian's wine64 (what installer/wine_smoke_test.sh and .ci/run look for)."""
    return shutil.which("wine64") or ("/usr/lib/wine/wine64" if Path("/usr/lib/wine/wine64").exists() else None)


@pytest.fixture(scope="module", autouse=True)
def build_tools():
    """makensis, 7z and file: skipped without them, failed under CANVAS_CHAT_REQUIRE_TOOLS=1 (CI)."""
    missing = [tool for tool in ("makensis", "7z", "file") if shutil.which(tool) is None]
    if missing:
        tool_missing(f"{', '.join(missing)} missing: apt-get install nsis p7zip-full file")


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory) -> Path:
    """A new machine's Python: a fresh venv with pip, a setuptools older than 69 and no wheel.

    build.sh must bring its own build backend (the project asks for setuptools>=69 and wheel).
    Skips when it cannot get the pinned uv wheel: neither cached nor downloadable (offline).
    """
    venv = tmp_path_factory.mktemp("fresh-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    if _version_of(python, "setuptools") is None or _version_of(python, "setuptools") >= (69,):
        subprocess.run([python, "-m", "pip", "install", "-q", "setuptools<69"], check=True, capture_output=True, timeout=300)
    assert _version_of(python, "setuptools") < (69,) and _version_of(python, "wheel") is None
    uv_pin = re.search(r"(?m)^uv==(\S+)", (INSTALLER / "uv-windows.txt").read_text(encoding="utf-8")).group(1)
    downloads = INSTALLER / "build" / "downloads"
    if not (downloads / f"uv-{uv_pin}-py3-none-win_amd64.whl").exists():
        fetched = subprocess.run(
            [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--platform", "win_amd64",
             "--require-hashes", "-r", str(INSTALLER / "uv-windows.txt"), "-d", str(downloads)],
            capture_output=True, text=True, timeout=300,
        )
        if fetched.returncode != 0:
            tool_missing(
                f"the pinned uv wheel (uv=={uv_pin}, win_amd64) is not cached in installer/build/downloads "
                f"and PyPI could not be reached to fetch it: {fetched.stderr.strip().splitlines()[-1:]}"
            )
    backend = subprocess.run(
        [python, "-m", "pip", "download", "-q", "--no-deps", "-d", str(venv / "backend"), "setuptools>=69", "wheel"],
        capture_output=True, text=True, timeout=300,
    )
    if backend.returncode != 0:
        tool_missing(
            "the wheel's isolated build needs setuptools>=69 and wheel from PyPI (or pip's cache), "
            f"and neither could be reached: {backend.stderr.strip().splitlines()[-1:]}"
        )
    return python


def _version_of(python: Path, package: str) -> tuple[int, ...] | None:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return None
    return tuple(int(part) for part in re.findall(r"\d+", proc.stdout)[:3])


def _build(python: Path, out_dir: Path, *extra: str) -> Path:
    proc = subprocess.run(
        ["bash", str(INSTALLER / "build.sh"), "--out", str(out_dir), *extra],
        capture_output=True,
        text=True,
        timeout=900 * TIMEOUT_SCALE,
        env={**os.environ, "PYTHON": str(python)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (setup,) = out_dir.glob("CanvasChat-Setup-*.exe")
    return setup


@pytest.fixture(scope="module")
def setup_exe(fresh_python, tmp_path_factory) -> Path:
    return _build(fresh_python, tmp_path_factory.mktemp("installer"))


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
        "machine.py",
        "payload/requirements.txt",
        "payload/requirements-torch-cu128.txt",
        "payload/requirements-torch-cpu.txt",
        "canvas-chat.ico",
        "Uninstall.exe",
    ):
        assert re.search(rf"\s{re.escape(name)}$", listing, re.MULTILINE), f"{name} missing from:\n{listing}"


def test_payload_files_are_the_ones_in_the_repo(payload):
    assert (payload / "bootstrap.py").read_bytes() == (INSTALLER / "bootstrap.py").read_bytes()
    assert (payload / "machine.py").read_bytes() == (INSTALLER.parent / "engine" / "machine.py").read_bytes()
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
def test_wine_silent_install_upgrade_uninstall(setup_exe, fresh_python, tmp_path):
    if wine64() is None:
        tool_missing("wine64 missing: apt-get install wine64 wine")
    newer = _build(fresh_python, tmp_path / "newer", "--version", "99.0.0", "--fast")
    proc = subprocess.run(
        ["bash", str(INSTALLER / "wine_smoke_test.sh"), str(setup_exe), str(newer)],
        capture_output=True,
        text=True,
        timeout=600 * TIMEOUT_SCALE,
    )
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "FAIL" not in proc.stdout
