"""`CancelWatchdog`: a deadline for each cancelled request. A worker that has not ended one by then
is hung (one denoising step takes well under a second), and the engine client restarts it."""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, QTimer, Signal

import app.qt_compat  # noqa: F401  (PySide6 6.12 / CPython 3.11 refcount fix, before any emit)


class CancelWatchdog(QObject):
    """One timer for all deadlines; `overdue(request_id)` when the first one passes."""

    overdue = Signal(str)

    def __init__(self, timeout_s: float, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.timeout_s = timeout_s
        self._deadlines: dict[str, float] = {}
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._on_timer_timeout)

    def watch(self, request_id: str) -> None:
        if request_id not in self._deadlines:
            self._deadlines[request_id] = time.monotonic() + self.timeout_s
            self._arm()

    def forget(self, request_id: str) -> None:
        self._deadlines.pop(request_id, None)

    def clear(self) -> None:
        self._deadlines.clear()
        self._timer.stop()

    def _arm(self) -> None:
        if not self._deadlines:
            self._timer.stop()
            return
        remaining_s = min(self._deadlines.values()) - time.monotonic()
        self._timer.start(max(1, int(remaining_s * 1000)))

    def _on_timer_timeout(self) -> None:
        now = time.monotonic()
        overdue = [request_id for request_id, deadline in self._deadlines.items() if deadline <= now]
        if overdue:
            self.overdue.emit(overdue[0])
        else:
            self._arm()
