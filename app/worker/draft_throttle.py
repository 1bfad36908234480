"""`DraftThrottle`: latest wins for drafts, at most one paint per request every ~16 ms.

A denoising step can rewrite the whole canvas, so a draft that a newer one supersedes before it
is painted is dropped. Only drafts pass through here: commits, done and errors never wait.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, QTimer, Signal

import app.qt_compat  # noqa: F401  (PySide6 6.12 / CPython 3.11 refcount fix, before any emit)
from engine.protocol import Draft

DRAFT_INTERVAL_MS = 16  # ~60 drafts a second at most


class DraftThrottle(QObject):
    """Holds the newest draft of each request and releases them together, at most every interval."""

    released = Signal(object)  # Draft

    def __init__(self, interval_ms: int = DRAFT_INTERVAL_MS, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._interval_ms = interval_ms
        self._pending: dict[str, Draft] = {}
        self._last_release = 0.0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._release_pending)

    def offer(self, draft: Draft) -> None:
        """Queues `draft` in place of any older one of its request; released now or when the interval ends."""
        self._pending[draft.request_id] = draft
        if self._timer.isActive():
            return
        elapsed_ms = (time.monotonic() - self._last_release) * 1000
        if elapsed_ms >= self._interval_ms:
            self._release_pending()
        else:
            self._timer.start(max(1, int(self._interval_ms - elapsed_ms)))

    def drop(self, request_id: str) -> None:
        """Forgets a waiting draft (its canvas was committed, or the request ended)."""
        self._pending.pop(request_id, None)

    def clear(self) -> None:
        self._timer.stop()
        self._pending.clear()

    def _release_pending(self) -> None:
        drafts = list(self._pending.values())
        self._pending.clear()
        if drafts:
            self._last_release = time.monotonic()
        for draft in drafts:
            self.released.emit(draft)
