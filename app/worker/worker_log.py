"""The worker's stderr in the GUI: each line into the "canvas_chat.engine" logger, the last ones kept.

The worker logs `LEVEL name: message`; a line without that prefix (a traceback) keeps the level
of the record it continues. The kept tail is what the crash banner shows.
"""

from __future__ import annotations

import collections
import logging
import re

worker_log = logging.getLogger("canvas_chat.engine")

STDERR_TAIL_LINES = 50
_STDERR_LINE = re.compile(r"^(CRITICAL|ERROR|WARNING|INFO|DEBUG)\s+([\w.\-]+):\s?(.*)$")


class WorkerLog:
    """Forwards worker stderr lines to the GUI's log and keeps the last `STDERR_TAIL_LINES`."""

    def __init__(self, tail_lines: int = STDERR_TAIL_LINES) -> None:
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._level = logging.INFO

    def add(self, line: str) -> None:
        self._tail.append(line)
        match = _STDERR_LINE.match(line)
        if match:
            self._level = logging.getLevelName(match.group(1))
            worker_log.log(self._level, "[%s] %s", match.group(2), match.group(3), extra={"worker_line": True})
        else:
            worker_log.log(self._level, "%s", line, extra={"worker_line": True})

    def note(self, text: str) -> None:
        """A line of the GUI's own about the worker (no answer, killed), shown with its tail."""
        self._tail.append(text)

    def tail(self) -> list[str]:
        return list(self._tail)
