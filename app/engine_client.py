"""`EngineClient`: supervises the engine worker process (`python -m engine serve`) from the GUI.

It owns the QProcess, speaks `engine.protocol` over its stdin/stdout, forwards the worker's
stderr into the "canvas_chat.engine" logger, throttles drafts (latest wins, at most ~60/s, never
dropping commits, done or errors), detects crashes and restarts with backoff. Nothing here
blocks the GUI thread, except the short bounded wait in `shutdown()` when the app closes.

States (`EngineState`): STOPPED → STARTING → (handshake) → LOADING → READY ⇄ GENERATING;
an unexpected exit → CRASHED → RESTARTING (backoff timer, relaunch, handshake) → LOADING → READY.
"""

from __future__ import annotations

import collections
import enum
import logging
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from PySide6.QtCore import QObject, QProcess, QTimer, Signal

import app.qt_compat  # noqa: F401  (PySide6 6.12 / CPython 3.11 refcount fix, before any emit)
from app.child_python import child_python
from engine import protocol
from engine.protocol import (
    PROTOCOL_VERSION,
    CanvasCommitted,
    ChatMessage,
    Done,
    Draft,
    Error,
    GenerationSettings,
    GenerationStats,
    LoadProgress,
    ModelLoaded,
    Ready,
)

log = logging.getLogger("canvas_chat.engine_client")
worker_log = logging.getLogger("canvas_chat.engine")


def worker_command() -> list[str]:
    """How the worker is started: `python -m engine serve`, without a console window on Windows."""
    return [child_python(), "-m", "engine", "serve"]


DRAFT_INTERVAL_MS = 16  # ~60 drafts a second at most
STDERR_TAIL_LINES = 50
RESTART_DELAYS_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
HANDSHAKE_TIMEOUT_S = 120.0  # importing torch on a cold disk can take a while
# A worker that has not ended a cancelled request by then is hung (one step takes well under a
# second): it is killed and restarted like a crashed one.
CANCEL_TIMEOUT_S = 15.0
_STDERR_LINE = re.compile(r"^(CRITICAL|ERROR|WARNING|INFO|DEBUG)\s+([\w.\-]+):\s?(.*)$")


def exit_description(code: int, normal_exit: bool) -> str:
    """How a process ended, in words: "exited with status 3", "killed by SIGKILL"."""
    if normal_exit:
        return f"exited with status {code}"
    if sys.platform != "win32" and 0 < code < 128:
        try:
            return f"killed by {signal.Signals(code).name}"
        except ValueError:
            return f"killed by signal {code}"
    return f"crashed (status {code:#x})" if code else "crashed"


class EngineState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    GENERATING = "generating"
    CRASHED = "crashed"
    RESTARTING = "restarting"


@dataclass(frozen=True)
class ModelRequest:
    model: str
    device: str = "auto"
    quantization: str = "auto"


@dataclass
class _Generation:
    request: protocol.Generate
    sent: bool = False


def _empty_stats() -> GenerationStats:
    return GenerationStats(
        time_to_first_draft_s=0.0,
        wall_s=0.0,
        new_tokens=0,
        tokens_per_s=0.0,
        decoder_forwards=0,
        tokens_per_forward=0.0,
        steps_per_canvas=0.0,
        canvases=0,
        prompt_tokens=0,
    )


def _chat_messages(messages: Iterable[Any]) -> list[ChatMessage]:
    result = []
    for message in messages:
        if isinstance(message, ChatMessage):
            result.append(message)
        elif isinstance(message, tuple):
            result.append(ChatMessage(role=message[0], content=message[1]))
        else:  # app.chat.Message or anything with role/content
            result.append(ChatMessage(role=message.role, content=message.content))
    return result


class EngineClient(QObject):
    """The GUI's handle on the worker process. Create one per app; call `shutdown()` on close.

    Signals (payloads are `engine.protocol` events):
      state_changed(EngineState)
      handshake_completed(Ready)
      load_progressed(LoadProgress)
      model_loaded(ModelLoaded)
      draft_received(Draft)                throttled: latest wins, at most ~60/s (paint these)
      draft_arrived(Draft)                 every draft as it arrives (record these, never paint)
      canvas_committed(CanvasCommitted)
      generation_finished(Done)            finish_reason "eos" | "length" | "cancelled"
      generation_failed(Error)             an error event for a generate request
      generation_interrupted(str)          request id; the worker died or was stopped mid-request
      error_received(Error)                any other error (load failure, protocol mismatch, ...)
      worker_crashed(int, list)            exit code (-1: killed by a signal), last stderr lines
    """

    state_changed = Signal(object)
    handshake_completed = Signal(object)
    load_progressed = Signal(object)
    model_loaded = Signal(object)
    draft_received = Signal(object)
    draft_arrived = Signal(object)
    canvas_committed = Signal(object)
    generation_finished = Signal(object)
    generation_failed = Signal(object)
    generation_interrupted = Signal(str)
    error_received = Signal(object)
    worker_crashed = Signal(int, list)
    # The local API server (docs/api.md): started/stopped/failed, and one event per HTTP request.
    api_server_started = Signal(object)
    api_server_stopped = Signal()
    api_server_failed = Signal(object)
    api_request_logged = Signal(object)

    def __init__(
        self,
        parent: QObject | None = None,
        *,
        command: Sequence[str] | None = None,
        restart_delays_s: Sequence[float] = RESTART_DELAYS_S,
        draft_interval_ms: int = DRAFT_INTERVAL_MS,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        cancel_timeout_s: float = CANCEL_TIMEOUT_S,
        auto_restart: bool = True,
    ) -> None:
        super().__init__(parent)
        self._command = list(command) if command is not None else worker_command()
        self._restart_delays_s = tuple(restart_delays_s)
        self.auto_restart = auto_restart
        self._state = EngineState.STOPPED
        self._process: QProcess | None = None
        self._stdout_buffer = b""
        self._stderr_buffer = b""
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.last_exit_description = ""  # "killed by SIGKILL", "exited with status 3"
        self._stderr_level = logging.INFO
        # Lifecycle facts; the state is derived from them in _update_state().
        self._launching = False  # process started, handshake not done yet
        self._handshaken = False
        self._stopping = False  # an exit now is expected (shutdown/restart)
        self._crashed = False
        self._restart_pending = False
        self._restart_attempts = 0
        self._fatal_error: Error | None = None
        self._hello_id = ""
        self._ready: Ready | None = None
        self._model_request: ModelRequest | None = None
        self._load_request_id: str | None = None
        self._model_info: ModelLoaded | None = None
        self._generations: dict[str, _Generation] = {}
        self._api_server: protocol.StartApiServer | None = None  # wanted on; resent after a restart
        self.last_exit_code: int | None = None

        self._pending_drafts: dict[str, Draft] = {}
        self._last_draft_emit = 0.0
        self._draft_interval_ms = draft_interval_ms
        self._draft_timer = QTimer(self)
        self._draft_timer.setSingleShot(True)
        self._draft_timer.timeout.connect(self._on_draft_timer_timeout)

        self._restart_timer = QTimer(self)
        self._restart_timer.setSingleShot(True)
        self._restart_timer.timeout.connect(self._on_restart_timer_timeout)

        self._handshake_timer = QTimer(self)
        self._handshake_timer.setSingleShot(True)
        self._handshake_timer.setInterval(int(handshake_timeout_s * 1000))
        self._handshake_timer.timeout.connect(self._on_handshake_timer_timeout)

        self._cancel_deadlines: dict[str, float] = {}
        self._cancel_timeout_s = cancel_timeout_s
        self._cancel_timer = QTimer(self)
        self._cancel_timer.setSingleShot(True)
        self._cancel_timer.timeout.connect(self._on_cancel_timer_timeout)

    # ------------------------------------------------------------------ public state

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def model_info(self) -> ModelLoaded | None:
        """The loaded model, or None."""
        return self._model_info

    @property
    def engine_version(self) -> str:
        return self._ready.engine_version if self._ready else ""

    @property
    def worker_pid(self) -> int | None:
        if self._process is None or self._process.state() == QProcess.ProcessState.NotRunning:
            return None
        return int(self._process.processId()) or None

    def stderr_tail(self) -> list[str]:
        """The worker's last stderr lines (for the crash banner)."""
        return list(self._stderr_tail)

    def active_request_ids(self) -> list[str]:
        return list(self._generations)

    # ------------------------------------------------------------------ public actions

    def start(self, model: str | None = None, device: str = "auto", quantization: str = "auto") -> None:
        """Starts the worker (if it is not running) and loads `model` once it answers."""
        if model is not None:
            self._model_request = ModelRequest(model, device, quantization)
        if self._process is not None:
            if model is not None:
                self.load_model(model, device, quantization)
            return
        self._restart_attempts = 0
        self._launch()

    def load_model(self, model: str, device: str = "auto", quantization: str = "auto") -> str:
        """Asks the worker to load a model; progress, then model_loaded or error_received."""
        self._model_request = ModelRequest(model, device, quantization)
        if self._process is None:
            self._launch()
            return ""
        if not self._handshaken:
            return ""  # sent right after the handshake
        return self._send_load()

    def generate(
        self,
        conversation_id: str,
        messages: Iterable[Any],
        system_prompt: str = "",
        settings: Any = None,
        thinking: bool = False,
    ) -> str:
        """Queues a reply; returns its request id. Results arrive through the signals."""
        if settings is None:
            generation_settings = GenerationSettings()
        elif isinstance(settings, GenerationSettings):
            generation_settings = settings
        else:
            generation_settings = settings.generation_settings()
        request = protocol.Generate(
            request_id=f"gen-{uuid.uuid4().hex[:12]}",
            messages=_chat_messages(messages),
            conversation_id=conversation_id,
            system_prompt=system_prompt,
            settings=generation_settings,
            thinking=thinking,
        )
        self._generations[request.request_id] = _Generation(request)
        if self._process is None and not self._restart_pending:
            # Not running and no restart coming: fail asynchronously, like any other failure.
            error = Error(
                request_id=request.request_id,
                code="engine_stopped",
                message="The engine is not running. Restart it and try again.",
                recoverable=True,
            )
            QTimer.singleShot(0, self, lambda: self._fail_generation(error))
        else:
            self._flush_outbox()
        self._update_state()
        return request.request_id

    def cancel(self, request_id: str) -> None:
        """Stops a reply within one denoising step; it ends with Done(finish_reason="cancelled")."""
        generation = self._generations.get(request_id)
        if generation is None:
            return
        if not generation.sent:
            del self._generations[request_id]
            self._pending_drafts.pop(request_id, None)
            done = Done(request_id=request_id, finish_reason="cancelled", text="", token_ids=[], stats=_empty_stats())
            self._update_state()
            QTimer.singleShot(0, self, lambda: self.generation_finished.emit(done))
            return
        self._send(protocol.Cancel(request_id=f"cancel-{uuid.uuid4().hex[:8]}", target_request_id=request_id))
        if request_id not in self._cancel_deadlines:
            self._cancel_deadlines[request_id] = time.monotonic() + self._cancel_timeout_s
            self._arm_cancel_timer()

    # ------------------------------------------------------------------ the local API server

    def start_api_server(self, port: int, token: str = "", host: str = "127.0.0.1") -> str:
        """Serves the loaded model over HTTP; ends in api_server_started or api_server_failed."""
        request = protocol.StartApiServer(request_id=f"api-{uuid.uuid4().hex[:8]}", host=host, port=port, token=token)
        self._api_server = request
        if self._handshaken:
            self._send(request)  # otherwise sent right after the handshake
        return request.request_id

    def stop_api_server(self) -> None:
        if self._api_server is None:
            return
        self._api_server = None
        if not self._send(protocol.StopApiServer(request_id=f"api-stop-{uuid.uuid4().hex[:8]}")):
            QTimer.singleShot(0, self, self.api_server_stopped.emit)  # no worker: nothing is serving

    @property
    def api_server_wanted(self) -> bool:
        return self._api_server is not None

    def _on_event_api_server_started(self, event: protocol.ApiServerStarted) -> None:
        if self._api_server is not None and event.request_id == self._api_server.request_id:
            self.api_server_started.emit(event)

    def _on_event_api_server_stopped(self, _event: protocol.ApiServerStopped) -> None:
        self.api_server_stopped.emit()

    def _on_event_api_request_logged(self, event: protocol.ApiRequestLogged) -> None:
        self.api_request_logged.emit(event)

    def restart(self) -> None:
        """Manual restart (the crash banner's button): a fresh worker, the model reloaded."""
        self._restart_timer.stop()
        self._restart_pending = False
        self._restart_attempts = 0
        if self._process is not None:
            self._stop_process(wait_ms=0)
            self._restart_pending = True  # relaunched from _on_process_finished
            self._update_state()
        else:
            self._launch(restarting=True)

    def shutdown(self, timeout_ms: int = 3000) -> None:
        """App close: Shutdown, close stdin, wait briefly, then terminate/kill. Leaves no process."""
        self._restart_timer.stop()
        self._restart_pending = False
        self._draft_timer.stop()
        self._pending_drafts.clear()
        if self._process is not None:
            self._stop_process(wait_ms=timeout_ms)
        self._crashed = False
        self._update_state()

    # ------------------------------------------------------------------ process lifecycle

    def _launch(self, restarting: bool = False) -> None:
        process = QProcess(self)
        process.setProgram(self._command[0])
        process.setArguments(self._command[1:])
        process.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        process.readyReadStandardOutput.connect(self._on_process_stdout)
        process.readyReadStandardError.connect(self._on_process_stderr)
        process.started.connect(self._on_process_started)
        process.finished.connect(self._on_process_finished)
        process.errorOccurred.connect(self._on_process_error)
        self._process = process
        self._stdout_buffer = b""
        self._stderr_buffer = b""
        self._launching = True
        self._handshaken = False
        self._stopping = False
        self._crashed = False
        self._fatal_error = None
        self._ready = None
        self._model_info = None
        self._load_request_id = None
        self._restart_pending = restarting
        self._update_state()
        log.info("starting engine worker: %s", " ".join(self._command))
        process.start()
        self._handshake_timer.start()

    def _stop_process(self, wait_ms: int) -> None:
        process = self._process
        if process is None:
            return
        self._stopping = True
        if process.state() != QProcess.ProcessState.Running or wait_ms <= 0:
            process.kill()
            if wait_ms > 0:
                process.waitForFinished(1000)
            return
        self._send(protocol.Shutdown(request_id=f"shutdown-{uuid.uuid4().hex[:8]}"))
        process.closeWriteChannel()
        # The one bounded blocking wait: the app is closing and must not leave an orphan.
        if not process.waitForFinished(wait_ms):
            log.warning("engine worker did not exit after Shutdown; terminating it")
            process.terminate()
            if not process.waitForFinished(1000):
                process.kill()
                process.waitForFinished(1000)

    def _on_process_started(self) -> None:
        self._hello_id = f"hello-{uuid.uuid4().hex[:8]}"
        self._send(protocol.Hello(request_id=self._hello_id, protocol_version=PROTOCOL_VERSION, client="canvas-chat"))

    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.ProcessError.FailedToStart or self._process is None:
            return  # a crash also emits finished(), handled there
        message = f"could not start the engine worker: {self._process.errorString()}"
        log.error(message)
        self._stderr_tail.append(message)
        self._handle_exit(exit_code=-1, normal_exit=False)

    def _on_process_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        self._on_process_stdout()
        self._on_process_stderr()
        if self._stderr_buffer:
            self._handle_stderr_line(self._stderr_buffer.decode("utf-8", "replace"))
            self._stderr_buffer = b""
        normal = exit_status == QProcess.ExitStatus.NormalExit
        self.last_exit_description = exit_description(exit_code, normal)
        self._handle_exit(exit_code if normal else -1, normal)

    def _handle_exit(self, exit_code: int, normal_exit: bool) -> None:
        process = self._process
        self._process = None
        if process is not None:
            process.deleteLater()
        self._handshake_timer.stop()
        self._launching = False
        self._handshaken = False
        self._model_info = None
        self._load_request_id = None
        self.last_exit_code = exit_code
        expected = self._stopping
        self._stopping = False
        interrupted = list(self._generations)
        self._generations.clear()
        self._cancel_deadlines.clear()
        self._cancel_timer.stop()
        self._pending_drafts.clear()
        self._draft_timer.stop()

        if expected:
            log.info("engine worker exited (code %s)", exit_code)
            relaunch = self._restart_pending
            self._update_state()
            for request_id in interrupted:
                self.generation_interrupted.emit(request_id)
            if relaunch:
                self._launch(restarting=True)
            return

        self._crashed = True
        tail = self.stderr_tail()
        log.warning("engine worker exited unexpectedly (%s)", self.last_exit_description)
        can_restart = (
            self.auto_restart
            and self._fatal_error is None
            and self._restart_attempts < len(self._restart_delays_s)
        )
        self._restart_pending = can_restart
        self._update_state()
        self.worker_crashed.emit(exit_code, tail)
        for request_id in interrupted:
            self.generation_interrupted.emit(request_id)
        if can_restart:
            delay = self._restart_delays_s[self._restart_attempts]
            self._restart_attempts += 1
            log.info("restarting the engine worker in %.1f s (try %d)", delay, self._restart_attempts)
            self._restart_timer.start(int(delay * 1000))
            self._update_state()

    def _on_restart_timer_timeout(self) -> None:
        if self._process is None and self._restart_pending:
            self._launch(restarting=True)

    def _arm_cancel_timer(self) -> None:
        if not self._cancel_deadlines:
            self._cancel_timer.stop()
            return
        remaining_s = min(self._cancel_deadlines.values()) - time.monotonic()
        self._cancel_timer.start(max(1, int(remaining_s * 1000)))

    def _on_cancel_timer_timeout(self) -> None:
        now = time.monotonic()
        overdue = [request_id for request_id, deadline in self._cancel_deadlines.items() if deadline <= now]
        if overdue and self._process is not None:
            log.warning(
                "engine worker did not stop request %s within %.0f s of the cancel; killing it",
                overdue[0],
                self._cancel_timeout_s,
            )
            self._stderr_tail.append(f"(the engine did not respond to Stop within {self._cancel_timeout_s:.0f} s)")
            self._cancel_deadlines.clear()
            self._process.kill()  # handled as a crash: the reply is interrupted, the worker restarts
            return
        self._arm_cancel_timer()

    def _on_handshake_timer_timeout(self) -> None:
        if self._process is not None and not self._handshaken:
            log.error("engine worker did not answer the handshake; killing it")
            self._stderr_tail.append("(no answer to the handshake)")
            self._process.kill()  # handled as a crash in _on_process_finished

    # ------------------------------------------------------------------ state

    def _update_state(self) -> None:
        if self._process is None:
            if self._crashed:
                state = EngineState.RESTARTING if self._restart_pending else EngineState.CRASHED
            else:
                state = EngineState.RESTARTING if self._restart_pending else EngineState.STOPPED
        elif self._stopping:
            state = EngineState.RESTARTING if self._restart_pending else self._state
        elif not self._handshaken:
            state = EngineState.RESTARTING if self._restart_pending else EngineState.STARTING
        elif self._load_request_id is not None:
            state = EngineState.LOADING
        elif self._generations:
            state = EngineState.GENERATING
        else:
            state = EngineState.READY
        if state != self._state:
            self._state = state
            log.debug("engine state: %s", state.value)
            self.state_changed.emit(state)

    # ------------------------------------------------------------------ sending

    def _send(self, message: Any) -> bool:
        process = self._process
        if process is None or process.state() != QProcess.ProcessState.Running:
            return False
        process.write((protocol.encode(message) + "\n").encode("utf-8"))
        return True

    def _send_load(self) -> str:
        request = self._model_request
        assert request is not None
        load = protocol.LoadModel(
            request_id=f"load-{uuid.uuid4().hex[:8]}",
            model=request.model,
            device=request.device,  # type: ignore[arg-type]
            quantization=request.quantization,  # type: ignore[arg-type]
        )
        self._load_request_id = load.request_id
        self._model_info = None
        self._send(load)
        self._update_state()
        return load.request_id

    def _flush_outbox(self) -> None:
        """Sends queued generate requests once the worker is ready for them."""
        if not self._handshaken or self._load_request_id is not None:
            return
        for generation in self._generations.values():
            if not generation.sent:
                generation.sent = self._send(generation.request)

    # ------------------------------------------------------------------ receiving

    def _on_process_stdout(self) -> None:
        process = self._process
        if process is None:
            return
        self._stdout_buffer += bytes(process.readAllStandardOutput())
        *lines, self._stdout_buffer = self._stdout_buffer.split(b"\n")
        for line in lines:
            line = line.strip()
            if line:
                self._handle_line(line)

    def _handle_line(self, line: bytes) -> None:
        try:
            event = protocol.decode(line, protocol.EVENT_TYPES)
        except protocol.ProtocolError as exc:
            log.warning("dropping a malformed line from the engine worker (%s): %.200r", exc, line)
            return
        handler = getattr(self, f"_on_event_{event.TYPE}", None)
        if handler is None:
            log.debug("ignoring %s event", event.TYPE)
            return
        handler(event)

    def _on_event_ready(self, event: Ready) -> None:
        self._handshake_timer.stop()
        if event.protocol_version != PROTOCOL_VERSION:
            error = Error(
                request_id=event.request_id,
                code="protocol_mismatch",
                message=(
                    f"The engine speaks protocol {event.protocol_version}, this app speaks "
                    f"{PROTOCOL_VERSION}. Reinstall Canvas Chat."
                ),
                recoverable=False,
            )
            self._fatal_error = error
            self.error_received.emit(error)
            if self._process is not None:
                self._process.kill()
            return
        self._ready = event
        self._launching = False
        self._handshaken = True
        self._restart_pending = False
        log.info("engine worker ready (engine %s, pid %d)", event.engine_version, event.pid)
        self.handshake_completed.emit(event)
        if self._api_server is not None:
            self._send(self._api_server)  # a restarted worker serves again
        if self._model_request is not None:
            self._send_load()
        self._flush_outbox()
        self._update_state()

    def _on_event_load_progress(self, event: LoadProgress) -> None:
        self.load_progressed.emit(event)

    def _on_event_model_loaded(self, event: ModelLoaded) -> None:
        if event.request_id != self._load_request_id:
            return
        self._load_request_id = None
        self._model_info = event
        self._restart_attempts = 0  # a worker that got this far is not crash-looping
        self._flush_outbox()
        self._update_state()
        self.model_loaded.emit(event)

    def _on_event_unloaded(self, event: Any) -> None:
        self._model_info = None

    def _on_event_draft(self, event: Draft) -> None:
        if event.request_id not in self._generations:
            return
        self.draft_arrived.emit(event)
        self._pending_drafts[event.request_id] = event
        if self._draft_timer.isActive():
            return
        elapsed_ms = (time.monotonic() - self._last_draft_emit) * 1000
        if elapsed_ms >= self._draft_interval_ms:
            self._emit_pending_drafts()
        else:
            self._draft_timer.start(max(1, int(self._draft_interval_ms - elapsed_ms)))

    def _on_draft_timer_timeout(self) -> None:
        self._emit_pending_drafts()

    def _emit_pending_drafts(self) -> None:
        drafts = list(self._pending_drafts.values())
        self._pending_drafts.clear()
        if drafts:
            self._last_draft_emit = time.monotonic()
        for draft in drafts:
            if draft.request_id in self._generations:
                self.draft_received.emit(draft)

    def _on_event_canvas_committed(self, event: CanvasCommitted) -> None:
        # The committed canvas supersedes any draft of it still waiting for the throttle.
        self._pending_drafts.pop(event.request_id, None)
        if event.request_id in self._generations:
            self.canvas_committed.emit(event)

    def _on_event_done(self, event: Done) -> None:
        self._pending_drafts.pop(event.request_id, None)
        self._cancel_deadlines.pop(event.request_id, None)
        if self._generations.pop(event.request_id, None) is None:
            return
        self._update_state()
        self.generation_finished.emit(event)

    def _on_event_error(self, event: Error) -> None:
        if not event.recoverable:
            self._fatal_error = event  # the worker exits next; no automatic restart
        if self._api_server is not None and event.request_id == self._api_server.request_id:
            self._api_server = None
            log.info("local API server not started: %s", event.message)  # shown in its window
            self.api_server_failed.emit(event)
            return
        if event.request_id in self._generations:
            self._fail_generation(event)
            return
        if event.request_id == self._load_request_id:
            self._load_request_id = None
            self._model_info = None
            self._flush_outbox()  # queued requests get the worker's own no_model_loaded error
            self._update_state()
        log.warning("engine error %s: %s", event.code, event.message)
        self.error_received.emit(event)

    def _fail_generation(self, error: Error) -> None:
        self._pending_drafts.pop(error.request_id, None)
        self._cancel_deadlines.pop(error.request_id, None)
        if self._generations.pop(error.request_id, None) is None:
            return
        self._update_state()
        self.generation_failed.emit(error)

    # ------------------------------------------------------------------ stderr

    def _on_process_stderr(self) -> None:
        process = self._process
        if process is None:
            return
        self._stderr_buffer += bytes(process.readAllStandardError())
        *lines, self._stderr_buffer = self._stderr_buffer.split(b"\n")
        for line in lines:
            self._handle_stderr_line(line.decode("utf-8", "replace"))

    def _handle_stderr_line(self, line: str) -> None:
        # A progress bar redraws itself with carriage returns: keep its latest state only.
        line = next((part for part in reversed(line.split("\r")) if part.strip()), "")
        if not line:
            return
        self._stderr_tail.append(line)
        match = _STDERR_LINE.match(line)
        if match:
            self._stderr_level = logging.getLevelName(match.group(1))
            worker_log.log(self._stderr_level, "[%s] %s", match.group(2), match.group(3), extra={"worker_line": True})
        else:
            # Continuation lines (tracebacks) keep the level of the record they belong to.
            worker_log.log(self._stderr_level, "%s", line, extra={"worker_line": True})
