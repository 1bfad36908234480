"""`EngineClient`: supervises the engine worker process (`python -m engine serve`) from the GUI.

It speaks `engine.protocol` with the worker through a `LineProcess`, keeps the requests in
flight, passes drafts through a `DraftThrottle` (never commits, done or errors), forwards the
worker's stderr through `WorkerLog`, detects crashes and restarts with backoff. Nothing here
blocks the GUI thread, except the short bounded wait in `shutdown()` when the app closes.

States (`EngineState`, allowed moves in `TRANSITIONS`): STOPPED → STARTING → (handshake) →
LOADING → READY ⇄ GENERATING; an unexpected exit → CRASHED → RESTARTING (backoff timer, relaunch,
handshake) → LOADING → READY.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QObject, QTimer, Signal

import app.qt_compat  # noqa: F401  (PySide6 6.12 / CPython 3.11 refcount fix, before any emit)
from app.worker.cancel_watchdog import CancelWatchdog
from app.worker.child_python import child_python
from app.worker.draft_throttle import DRAFT_INTERVAL_MS, DraftThrottle
from app.worker.engine_state import EngineState, next_state
from app.worker.line_process import LineProcess
from app.worker.worker_log import WorkerLog
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
    RewriteSpan,
    SpanDraft,
    SpanRewritten,
    Unloaded,
)

log = logging.getLogger("canvas_chat.engine_client")



def worker_command() -> list[str]:
    """How the worker is started: `python -m engine serve`, without a console window on Windows."""
    return [child_python(), "-m", "engine", "serve"]


RESTART_DELAYS_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
HANDSHAKE_TIMEOUT_S = 120.0  # importing torch on a cold disk can take a while
# A worker that has not ended a cancelled request by then is hung (one step takes well under a
# second): it is killed and restarted like a crashed one.
CANCEL_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ModelRequest:
    model: str
    device: str = "auto"
    quantization: str = "auto"


@dataclass
class _Generation:
    request: protocol.Generate | RewriteSpan
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
      generation_failed(Error)             an error event for a generate (or rewrite_span) request
      span_draft_received(SpanDraft)       a rewrite's drafts, throttled like draft_received
      span_draft_arrived(SpanDraft)        every one of them as it arrives
      span_rewritten(SpanRewritten)        a rewrite ended: "rewritten" or "cancelled"
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
    span_draft_received = Signal(object)
    span_draft_arrived = Signal(object)
    span_rewritten = Signal(object)
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
        self._process: LineProcess | None = None
        self._worker_log = WorkerLog()
        self.last_exit_description = ""  # "killed by SIGKILL", "exited with status 3"
        # Lifecycle facts; _update_state() derives the state from them and checks the move.
        self._handshaken = False
        self._stopping = False  # an exit now is expected (shutdown/restart)
        self._crashed = False
        self._restart_pending = False
        self._restart_attempts = 0
        self._fatal_error: Error | None = None
        self._ready: Ready | None = None
        self._model_request: ModelRequest | None = None
        self._load_request_id: str | None = None
        self._model_info: ModelLoaded | None = None
        self._generations: dict[str, _Generation] = {}
        self._api_server: protocol.StartApiServer | None = None  # wanted on; resent after a restart
        self.last_exit_code: int | None = None

        self._drafts = DraftThrottle(draft_interval_ms, self)
        self._drafts.released.connect(self._on_drafts_released)

        self._restart_timer = QTimer(self)
        self._restart_timer.setSingleShot(True)
        self._restart_timer.timeout.connect(self._on_restart_timer_timeout)

        self._handshake_timer = QTimer(self)
        self._handshake_timer.setSingleShot(True)
        self._handshake_timer.setInterval(int(handshake_timeout_s * 1000))
        self._handshake_timer.timeout.connect(self._on_handshake_timer_timeout)

        self._cancels = CancelWatchdog(cancel_timeout_s, self)
        self._cancels.overdue.connect(self._on_cancels_overdue)

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
        return None if self._process is None else self._process.pid

    def stderr_tail(self) -> list[str]:
        """The worker's last stderr lines (for the crash banner)."""
        return self._worker_log.tail()

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
        messages: Sequence[ChatMessage],
        system_prompt: str = "",
        settings: GenerationSettings | None = None,
        thinking: bool = False,
    ) -> str:
        """Queues a reply; returns its request id. Results arrive through the signals."""
        request = protocol.Generate(
            request_id=f"gen-{uuid.uuid4().hex[:12]}",
            messages=list(messages),
            conversation_id=conversation_id,
            system_prompt=system_prompt,
            settings=settings or GenerationSettings(),
            thinking=thinking,
        )
        return self._queue(request)

    def rewrite_span(
        self,
        messages: Sequence[ChatMessage],
        reply_token_ids: Sequence[int],
        char_start: int,
        char_end: int,
        instruction: str = "",
        system_prompt: str = "",
        settings: GenerationSettings | None = None,
    ) -> str:
        """Queues a rewrite of reply characters [char_start, char_end) (widened to whole tokens by
        the worker); returns its request id. Drafts, then span_rewritten or generation_failed."""
        request = RewriteSpan(
            request_id=f"rewrite-{uuid.uuid4().hex[:12]}",
            messages=list(messages),
            reply_token_ids=list(reply_token_ids),
            span_start=char_start,
            span_end=char_end,
            instruction=instruction,
            system_prompt=system_prompt,
            settings=settings or GenerationSettings(),
            span_unit="characters",
        )
        return self._queue(request)

    def _queue(self, request: protocol.Generate | RewriteSpan) -> str:
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
            self._drafts.drop(request_id)
            self._update_state()
            request = generation.request
            if isinstance(request, RewriteSpan):
                ids = list(request.reply_token_ids)
                ended = SpanRewritten(request_id, "cancelled", "", ids, 0, 0, [0, 0], [], _empty_stats())
                QTimer.singleShot(0, self, lambda: self.span_rewritten.emit(ended))
                return
            done = Done(request_id=request_id, finish_reason="cancelled", text="", token_ids=[], stats=_empty_stats())
            QTimer.singleShot(0, self, lambda: self.generation_finished.emit(done))
            return
        self._send(protocol.Cancel(request_id=f"cancel-{uuid.uuid4().hex[:8]}", target_request_id=request_id))
        self._cancels.watch(request_id)

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
            self._restart_pending = True  # relaunched from _on_process_exited
            self._update_state()
        else:
            self._launch(restarting=True)

    def shutdown(self, timeout_ms: int = 3000) -> None:
        """App close: Shutdown, close stdin, wait briefly, then terminate/kill. Leaves no process."""
        self._restart_timer.stop()
        self._restart_pending = False
        self._drafts.clear()
        if self._process is not None:
            self._stop_process(wait_ms=timeout_ms)
        self._crashed = False
        self._update_state()

    # ------------------------------------------------------------------ process lifecycle

    def _launch(self, restarting: bool = False) -> None:
        process = LineProcess(self._command, parent=self)
        process.line_received.connect(self._handle_line)
        process.stderr_line_received.connect(self._worker_log.add)
        process.started.connect(self._on_process_started)
        process.failed_to_start.connect(self._on_process_failed_to_start)
        process.exited.connect(self._on_process_exited)
        self._process = process
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
        if not process.is_running or wait_ms <= 0:
            process.kill()
            if wait_ms > 0:
                process.wait_for_exit(1000)
            return
        self._send(protocol.Shutdown(request_id=f"shutdown-{uuid.uuid4().hex[:8]}"))
        process.close_input()
        # The one bounded blocking wait: the app is closing and must not leave an orphan.
        if not process.wait_for_exit(wait_ms):
            log.warning("engine worker did not exit after Shutdown; terminating it")
            process.terminate()
            if not process.wait_for_exit(1000):
                process.kill()
                process.wait_for_exit(1000)

    def _on_process_started(self) -> None:
        hello_id = f"hello-{uuid.uuid4().hex[:8]}"
        self._send(protocol.Hello(request_id=hello_id, protocol_version=PROTOCOL_VERSION, client="canvas-chat"))

    def _on_process_failed_to_start(self, reason: str) -> None:
        message = f"could not start the engine worker: {reason}"
        log.error(message)
        self._worker_log.note(message)

    def _on_process_exited(self, exit_code: int, normal_exit: bool) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        self.last_exit_description = process.exit_description
        process.deleteLater()
        self._handshake_timer.stop()
        self._handshaken = False
        self._model_info = None
        self._load_request_id = None
        self.last_exit_code = exit_code
        expected = self._stopping
        self._stopping = False
        interrupted = list(self._generations)
        self._generations.clear()
        self._cancels.clear()
        self._drafts.clear()

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

    def _on_cancels_overdue(self, request_id: str) -> None:
        if self._process is None:
            return
        timeout_s = self._cancels.timeout_s
        log.warning("engine worker did not stop request %s within %.0f s of the cancel; killing it", request_id, timeout_s)
        self._worker_log.note(f"(the engine did not respond to Stop within {timeout_s:.0f} s)")
        self._cancels.clear()
        self._process.kill()  # handled as a crash: the reply is interrupted, the worker restarts

    def _on_handshake_timer_timeout(self) -> None:
        if self._process is not None and not self._handshaken:
            log.error("engine worker did not answer the handshake; killing it")
            self._worker_log.note("(no answer to the handshake)")
            self._process.kill()  # handled as a crash in _on_process_finished

    # ------------------------------------------------------------------ state

    def _update_state(self) -> None:
        state = next_state(
            self._state,
            running=self._process is not None,
            crashed=self._crashed,
            stopping=self._stopping,
            restart_pending=self._restart_pending,
            handshaken=self._handshaken,
            loading=self._load_request_id is not None,
            generating=bool(self._generations),
        )
        if state != self._state:
            self._state = state
            log.debug("engine state: %s", state.value)
            self.state_changed.emit(state)

    # ------------------------------------------------------------------ sending

    def _send(self, message: protocol.Request) -> bool:
        return self._process is not None and self._process.write_line(protocol.encode(message))

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

    def _on_event_unloaded(self, event: Unloaded) -> None:
        self._model_info = None

    def _on_event_draft(self, event: Draft) -> None:
        if event.request_id not in self._generations:
            return
        self.draft_arrived.emit(event)
        self._drafts.offer(event)

    def _on_drafts_released(self, draft: Draft | SpanDraft) -> None:
        if draft.request_id in self._generations:
            (self.span_draft_received if isinstance(draft, SpanDraft) else self.draft_received).emit(draft)

    def _on_event_span_draft(self, event: SpanDraft) -> None:
        if event.request_id not in self._generations:
            return
        self.span_draft_arrived.emit(event)
        self._drafts.offer(event)

    def _on_event_span_rewritten(self, event: SpanRewritten) -> None:
        self._drafts.drop(event.request_id)
        self._cancels.forget(event.request_id)
        if self._generations.pop(event.request_id, None) is None:
            return
        self._update_state()
        self.span_rewritten.emit(event)

    def _on_event_canvas_committed(self, event: CanvasCommitted) -> None:
        # The committed canvas supersedes any draft of it still waiting for the throttle.
        self._drafts.drop(event.request_id)
        if event.request_id in self._generations:
            self.canvas_committed.emit(event)

    def _on_event_done(self, event: Done) -> None:
        self._drafts.drop(event.request_id)
        self._cancels.forget(event.request_id)
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
        self._drafts.drop(error.request_id)
        self._cancels.forget(error.request_id)
        if self._generations.pop(error.request_id, None) is None:
            return
        self._update_state()
        self.generation_failed.emit(error)
