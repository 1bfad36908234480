"""`ModelDownload`: the Qt supervisor of one download child (`python -m app.setup.download_child`).

The transfer runs in that child, so the GUI thread never waits on the network and a stuck
connection can always be stopped. Resumable across pauses, app restarts and dropped connections:
each file is fetched with HTTP Range requests into `blobs/<hash>.incomplete` in the cache, files
the cache already holds are reused, free disk space is checked first, and every file is checked
against the Hub's metadata (size, sha256 or git blob hash) before it enters the cache. Nothing but
these requests leaves the machine.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path

from PySide6.QtCore import QObject, QProcessEnvironment, QTimer, Signal

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)
from app.setup.download_events import (
    DOWNLOAD_EVENT_TYPES,
    DownloadCancelled,
    DownloadDone,
    DownloadFailed,
    DownloadPaused,
    DownloadPlanned,
    DownloadProgress,
    StageChanged,
)
from app.worker.child_python import child_python
from app.worker.line_process import LineProcess
from engine import protocol
from engine.hub import REAL_MODEL_ID

log = logging.getLogger("canvas_chat.download")

CHILD_MODULE = "app.setup.download_child"


class ModelDownload(QObject):
    """Supervises one download process: start, pause, resume, cancel; events as signals.

    States: idle → running → (pausing → paused | cancelling → cancelled | done | failed);
    paused, cancelled and failed can start again (resume picks up the partial files).
    """

    state_changed = Signal(str)
    stage_changed = Signal(str, str)  # stage, message
    planned = Signal(object)  # DownloadPlanned
    progressed = Signal(object)  # DownloadProgress
    finished = Signal(str)  # the snapshot folder
    failed = Signal(str, str)  # code, message
    paused = Signal()
    cancelled = Signal()

    STOP_GRACE_MS = 5000

    def __init__(
        self,
        repo_id: str = REAL_MODEL_ID,
        *,
        revision: str = "main",
        endpoint: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        extra_env: dict[str, str] | None = None,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.repo_id = repo_id
        self.revision = revision
        self.endpoint = endpoint
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.extra_env = dict(extra_env or {})
        self.state = "idle"
        self.last_progress: DownloadProgress | None = None
        self.last_plan: DownloadPlanned | None = None
        self.last_error: tuple[str, str] | None = None
        self.result_path: str | None = None
        self._token: str | None = None
        self._process: LineProcess | None = None
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._terminal_event: str | None = None
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._on_kill_timer_timeout)

    # -- commands

    @property
    def is_running(self) -> bool:
        return self._process is not None

    def start(self, token: str | None = None) -> None:
        if self._process is not None:
            return
        self._token = (token or "").strip() or None
        self._terminal_event = None
        self.last_error = None
        self._stderr_tail.clear()
        process = LineProcess(self.command(), environment=self._environment(), parent=self)
        process.line_received.connect(self._on_process_line_received)
        process.stderr_line_received.connect(self._on_process_stderr_line_received)
        process.failed_to_start.connect(self._on_process_failed_to_start)
        process.exited.connect(self._on_process_exited)
        self._process = process
        self._set_state("running")
        process.start()

    def command(self) -> list[str]:
        """The download process's command line; no console window on Windows."""
        command = [child_python(), "-m", CHILD_MODULE, "--repo", self.repo_id, "--revision", self.revision]
        if self.cache_dir:
            command += ["--cache-dir", self.cache_dir]
        return command

    def resume(self) -> None:
        self.start(self._token)

    def pause(self) -> None:
        self._stop("pause")

    def cancel(self) -> None:
        if self._process is None:
            if self.state in ("paused", "failed"):
                self._delete_partials()
                self._set_state("cancelled")
                self.cancelled.emit()
            return
        self._stop("cancel")

    def shutdown(self, timeout_ms: int = 10000) -> None:
        """Pauses (keeping partial files) and waits for the process; for closing the app."""
        if self._process is None:
            return
        self._stop("pause")
        process = self._process
        if process is not None and not process.wait_for_exit(timeout_ms):
            process.kill()
            process.wait_for_exit(timeout_ms)

    # -- internals

    def _environment(self) -> QProcessEnvironment:
        env = QProcessEnvironment.systemEnvironment()
        # The user pressed Download: this process may go online even where the app otherwise
        # keeps huggingface_hub offline.
        env.insert("HF_HUB_OFFLINE", "0")
        env.insert("HF_HUB_DISABLE_TELEMETRY", "1")
        env.insert("PYTHONUNBUFFERED", "1")
        env.insert("PYTHONIOENCODING", "utf-8")
        root = str(Path(__file__).resolve().parents[2])
        env.insert("PYTHONPATH", os.pathsep.join(filter(None, [root, env.value("PYTHONPATH", "")])))
        if self.endpoint:
            env.insert("HF_ENDPOINT", self.endpoint)
        if self._token:
            env.insert("HF_TOKEN", self._token)
        for key, value in self.extra_env.items():
            env.insert(key, value)
        return env

    def _stop(self, action: str) -> None:
        if self._process is None or self.state in ("pausing", "cancelling"):
            if action == "cancel" and self.state == "pausing":
                pass  # escalate a pause in flight to a cancel
            else:
                return
        self._set_state("cancelling" if action == "cancel" else "pausing")
        self._process.write_line(action)
        self._kill_timer.start(self.STOP_GRACE_MS)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)

    def _delete_partials(self) -> None:
        for path in self.last_plan.partial_paths if self.last_plan else []:
            try:
                Path(path).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not delete %s: %s", path, exc)

    def _on_kill_timer_timeout(self) -> None:
        if self._process is not None:
            log.warning("download process did not stop within %d ms; killing it", self.STOP_GRACE_MS)
            self._process.kill()

    def _on_process_line_received(self, line: bytes) -> None:
        try:
            event = protocol.decode(line, DOWNLOAD_EVENT_TYPES)
        except protocol.ProtocolError as exc:
            log.warning("download process: not an event (%s): %r", exc, line[:200])
            return
        if isinstance(event, DownloadProgress):
            self.last_progress = event
            self.progressed.emit(event)
        elif isinstance(event, StageChanged):
            self.stage_changed.emit(event.stage, event.message)
        elif isinstance(event, DownloadPlanned):
            self.last_plan = event
            self.planned.emit(event)
        elif isinstance(event, (DownloadDone, DownloadPaused, DownloadCancelled, DownloadFailed)):
            self._terminal_event = event.TYPE
            if isinstance(event, DownloadDone):
                self.result_path = event.path
            elif isinstance(event, DownloadFailed):
                self.last_error = (event.code, event.message)

    def _on_process_stderr_line_received(self, line: str) -> None:
        self._stderr_tail.append(line)
        log.info("download: %s", line)

    def _on_process_failed_to_start(self, reason: str) -> None:
        self.last_error = ("failed", "The download process could not be started.")

    def _on_process_exited(self, exit_code: int, normal_exit: bool) -> None:
        if self._process is None:
            return
        requested = self.state
        self._kill_timer.stop()
        process, self._process = self._process, None
        process.deleteLater()
        event = self._terminal_event
        if event == DownloadDone.TYPE:
            self._set_state("done")
            self.finished.emit(self.result_path or "")
        elif event == DownloadCancelled.TYPE or requested == "cancelling":
            self._delete_partials()  # the process may have been killed before it could
            self._set_state("cancelled")
            self.cancelled.emit()
        elif event == DownloadPaused.TYPE or requested == "pausing":
            self._set_state("paused")
            self.paused.emit()
        else:
            if self.last_error is None:
                tail = "\n".join(list(self._stderr_tail)[-3:])
                self.last_error = (
                    "crashed",
                    f"The download stopped unexpectedly (exit status {exit_code}). "
                    "What arrived so far is kept: press Resume to continue." + (f"\n{tail}" if tail else ""),
                )
            self._set_state("failed")
            self.failed.emit(*self.last_error)
