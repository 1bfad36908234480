"""The interpreter the app starts its child processes with (the engine worker, a model download).

On Windows a console program started from a windowed app opens a console window of its own;
the windowed interpreter (pythonw.exe, next to python.exe) opens none and still gets the pipes.
"""

from __future__ import annotations

import sys
from pathlib import Path


def child_python(executable: str | None = None, platform: str | None = None) -> str:
    executable = executable or sys.executable
    platform = platform or sys.platform
    if platform != "win32":
        return executable
    path = Path(executable)
    if path.name.lower() == "python.exe":
        windowed = path.with_name("pythonw.exe")
        if windowed.is_file():
            return str(windowed)
    return executable
