"""What this PC has: its NVIDIA GPUs as nvidia-smi lists them, system memory and free disk space.

Standard library only and self-contained (no engine imports): the GUI, the worker and the
installer's bootstrap all ask through this one file, which the installer build copies beside
bootstrap.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

NVIDIA_SMI_TIMEOUT_S = 8.0
SMI_FIELDS = ("index", "name", "compute_cap", "driver_version", "memory.total", "memory.free")
# Drivers before 2019 installed nvidia-smi here instead of System32.
LEGACY_NVIDIA_SMI = r"C:\Program Files\NVIDIA Corporation\NVSMI\nvidia-smi.exe"


def nvidia_smi_path(name: str = "nvidia-smi") -> str | None:
    """The nvidia-smi to run: `name` on PATH (or as a path), else where Windows drivers put it."""
    found = shutil.which(name)
    if found:
        return found
    if sys.platform == "win32" and name == "nvidia-smi":
        for candidate in (
            Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32" / "nvidia-smi.exe",
            Path(os.environ.get("ProgramFiles", r"C:\Program Files")) / "NVIDIA Corporation" / "NVSMI" / "nvidia-smi.exe",
            Path(LEGACY_NVIDIA_SMI),
        ):
            if candidate.is_file():
                return str(candidate)
    return None


def query_nvidia_smi(
    problems: list[str], *, exe: str = "nvidia-smi", timeout_s: float | None = None
) -> list[dict[str, Any]]:
    """GPUs as nvidia-smi lists them; [] when there is no NVIDIA driver (a note goes to problems)."""
    path = nvidia_smi_path(exe)
    if path is None:
        return []
    timeout = NVIDIA_SMI_TIMEOUT_S if timeout_s is None else timeout_s
    fields = list(SMI_FIELDS)
    for _ in range(2):
        try:
            result = subprocess.run(
                [path, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                timeout=timeout,
                # A GUI app or a console-less installer must not flash a console window for this.
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
            )
        except subprocess.TimeoutExpired:
            problems.append(f"nvidia-smi did not answer within {timeout:.0f} s")
            return []
        except OSError as exc:
            problems.append(f"nvidia-smi could not be started ({exc})")
            return []
        if result.returncode == 0:
            return parse_nvidia_smi_csv(result.stdout, fields)
        if "compute_cap" in fields and "compute_cap" in (result.stdout + result.stderr):
            fields.remove("compute_cap")  # drivers before 510 do not know this field
            continue
        message = (result.stderr or result.stdout).strip().splitlines()
        problems.append(f"nvidia-smi failed: {message[0] if message else f'exit status {result.returncode}'}")
        return []
    return []


def parse_nvidia_smi_csv(text: str, fields: list[str] | tuple[str, ...] = SMI_FIELDS) -> list[dict[str, Any]]:
    gpus = []
    for line in text.splitlines():
        values = [value.strip() for value in line.split(",")]
        if len(values) != len(fields):
            continue
        row = dict(zip(fields, values))
        gpus.append(
            {
                "index": _int_or_none(row.get("index")),
                "name": row.get("name") or "NVIDIA GPU",
                "compute_capability": _clean(row.get("compute_cap")),
                "driver_version": _clean(row.get("driver_version")),
                "total_vram_bytes": _mib(row.get("memory.total")),
                "free_vram_bytes": _mib(row.get("memory.free")),
            }
        )
    return gpus


def _clean(value: str | None) -> str | None:
    if value is None or value.strip() in ("", "[N/A]", "N/A", "[Not Supported]"):
        return None
    return value.strip()


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _mib(value: str | None) -> int | None:
    number = _int_or_none(value)
    return None if number is None else number * 1024 * 1024


def system_ram() -> tuple[int | None, int | None]:
    """(total, available) bytes of system memory; available counts reclaimable caches as free."""
    if sys.platform == "win32":
        return _windows_ram()
    meminfo = _linux_meminfo()
    if meminfo is not None:
        return meminfo
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None, None


def _linux_meminfo() -> tuple[int, int] | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as source:
            values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in source if line.split()[1:2]}
    except (OSError, ValueError, IndexError):
        return None
    if "MemTotal" not in values or "MemAvailable" not in values:
        return None
    return values["MemTotal"], values["MemAvailable"]


def _windows_ram() -> tuple[int | None, int | None]:
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_ulong),
            ("dwMemoryLoad", ctypes.c_ulong),
            ("ullTotalPhys", ctypes.c_ulonglong),
            ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong),
            ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong),
            ("ullAvailVirtual", ctypes.c_ulonglong),
            ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(MemoryStatus)
    if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
        return int(status.ullTotalPhys), int(status.ullAvailPhys)
    return None, None


def existing_folder(path: str | os.PathLike[str]) -> Path:
    """`path` or its nearest parent that exists (a folder not made yet is measured where it will be)."""
    folder = Path(path).expanduser().absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def disk_space(path: str | os.PathLike[str]) -> tuple[str, int | None, int | None]:
    """(existing folder measured, free bytes, total bytes) for `path` or its nearest parent."""
    folder = existing_folder(path)
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return str(folder), None, None
    return str(folder), int(usage.free), int(usage.total)
