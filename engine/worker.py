"""The worker process: a reader thread, one loop that owns torch and the GPU, a writer thread.

stdin carries requests and stdout events, one JSON object per line (`engine.protocol`);
everything else the process prints goes to stderr. The worker exits when stdin closes.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import queue
import sys
import threading
import traceback
from collections import deque
from typing import IO, Any

from engine import __version__, test_switches
from engine import protocol as p
from engine.errors import EngineError

log = logging.getLogger("canvas_chat.engine.worker")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_PROTOCOL_MISMATCH = 3


class EventChannel:
    """Writes events on a thread of its own; a newer draft replaces one not yet written."""

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self._pending: deque[Any] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._thread.start()

    def send(self, event: Any) -> None:
        with self._condition:
            if self._closed:
                return
            last = self._pending[-1] if self._pending else None
            if (
                isinstance(event, p.Draft)
                and isinstance(last, p.Draft)
                and last.request_id == event.request_id
                and last.canvas_index == event.canvas_index
            ):
                self._pending[-1] = event  # latest wins: the superseded draft is never shown
            else:
                self._pending.append(event)
            self._condition.notify()

    def write_raw(self, line: str) -> None:
        """For the garbage-on-stdout test switch only."""
        with self._condition:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self, timeout: float = 5.0) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closed:
                    self._condition.wait()
                if not self._pending and self._closed:
                    return
                event = self._pending.popleft()
            try:
                self._stream.write(p.encode(event) + "\n")
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                return  # the parent is gone; the reader will see EOF and end the loop


class CancelRegistry:
    """Which requests have been cancelled; shared by the reader thread and the loop."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        self.everything = threading.Event()  # stdin closed: stop whatever runs

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._cancelled.add(request_id)

    def is_cancelled(self, request_id: str) -> bool:
        if self.everything.is_set():
            return True
        with self._lock:
            return request_id in self._cancelled

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._cancelled.discard(request_id)


class Engine:
    """The loop's state: the loaded model and conversation caches. Only the loop thread calls it."""

    def __init__(self, emit, cancels: CancelRegistry):
        self.emit = emit
        self.cancels = cancels
        self.loaded = None
        self.pieces: _PieceTable | None = None
        from engine.conversations import ConversationCaches

        self.caches = ConversationCaches()

    # -- requests -------------------------------------------------------------------------

    def handle(self, request: Any) -> int | None:
        """Serves one request; returns an exit status when the worker must stop."""
        try:
            if isinstance(request, p.Hello):
                return self._hello(request)
            if isinstance(request, p.LoadModel):
                self._load(request)
            elif isinstance(request, p.Generate):
                self._generate(request)
            elif isinstance(request, p.Unload):
                self._unload()
                self.emit(p.Unloaded(request.request_id))
            elif isinstance(request, p.ProbeHardware):
                self._probe_hardware(request)
            elif isinstance(request, p.Shutdown):
                return EXIT_OK
        except EngineError as exc:
            self.emit(p.Error(request.request_id, exc.code, exc.message, exc.recoverable, exc.detail))
            if not exc.recoverable:
                return EXIT_FATAL
        except Exception as exc:
            oom = _is_out_of_memory(exc)
            log.exception("request %s failed", request.request_id)
            if oom:
                self._after_out_of_memory()
            self.emit(
                p.Error(
                    request.request_id,
                    "out_of_memory" if oom else "internal",
                    _out_of_memory_message() if oom else f"The engine hit an unexpected error: {exc}",
                    True,
                    traceback.format_exc(limit=6),
                )
            )
        return None

    def _hello(self, request: p.Hello) -> int | None:
        if request.protocol_version != p.PROTOCOL_VERSION:
            self.emit(
                p.Error(
                    request.request_id,
                    "protocol_mismatch",
                    f"The GUI speaks protocol version {request.protocol_version} but this engine speaks "
                    f"version {p.PROTOCOL_VERSION}: reinstall Canvas Chat so both parts match.",
                    recoverable=False,
                )
            )
            return EXIT_PROTOCOL_MISMATCH
        self.emit(p.Ready(request.request_id, p.PROTOCOL_VERSION, __version__, os.getpid()))
        return None

    def _load(self, request: p.LoadModel) -> None:
        from engine.loading import load_model

        def progress(stage: str, message: str, fraction: float, **extra: int) -> None:
            self.emit(p.LoadProgress(request.request_id, stage, message, float(fraction), **extra))

        self._unload()
        test_switches.apply_load_fault()
        try:
            self.loaded = load_model(
                request.model,
                device=request.device,
                quantization=request.quantization,
                vision=request.vision,
                revision=request.revision,
                progress=progress,
            )
        except EngineError:
            raise
        except Exception as exc:
            if _is_out_of_memory(exc):
                self._after_out_of_memory()
                raise EngineError(
                    "out_of_memory",
                    "The GPU does not have enough free memory for this model. Close other GPU "
                    "programs, or choose 4-bit (NF4) quantization or the CPU.",
                    detail=str(exc),
                ) from None
            raise EngineError("load_failed", f"Loading {request.model} failed: {exc}", detail=traceback.format_exc(limit=6)) from None
        loaded = self.loaded
        self.pieces = _PieceTable(loaded.tokenizer)  # lives as long as the model: a draft needs every position's text
        self.emit(
            p.ModelLoaded(
                request.request_id,
                model=loaded.source,
                model_path=str(loaded.path),
                device=loaded.device,
                quantization=loaded.quantization,
                canvas_length=loaded.canvas_length,
                parameters=loaded.parameters,
                load_s=round(loaded.load_s, 3),
                is_demo=loaded.is_demo,
            )
        )

    def _unload(self) -> None:
        if self.loaded is None:
            return
        self.caches.clear()
        self.loaded = None
        import gc

        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _generate(self, request: p.Generate) -> None:
        from engine.generation import CanvasReport, StepObserver, StepReport, run_generation

        request_id = request.request_id
        if self.loaded is None:
            raise EngineError("no_model_loaded", "No model is loaded yet: load one before sending a message.")
        if not request.messages or request.messages[-1].role != "user":
            raise EngineError("bad_settings", "A conversation must end with a user message.")
        if self.cancels.is_cancelled(request_id):
            self._emit_cancelled_before_start(request)
            return
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.system_prompt.strip():
            messages.insert(0, {"role": "system", "content": request.system_prompt})
        plan = self.caches.plan(tokenizer, request.conversation_id, messages, request.reuse_cache)
        pieces = self.pieces
        emit = self.emit
        committed: list[int] = []

        class Observer(StepObserver):
            def on_step(self, report: StepReport) -> None:
                emit(
                    p.Draft(
                        request_id,
                        canvas_index=report.canvas_index,
                        step_index=report.step_index,
                        max_steps=report.max_steps,
                        text=tokenizer.decode(report.token_ids, skip_special_tokens=True),
                        pieces=pieces.of(report.token_ids),
                        settled=report.settled,
                        entropy=report.entropy_buckets,
                    )
                )

            def on_canvas(self, report: CanvasReport) -> None:
                committed.extend(report.token_ids)
                emit(
                    p.CanvasCommitted(
                        request_id,
                        canvas_index=report.canvas_index,
                        text=tokenizer.decode(report.token_ids, skip_special_tokens=True),
                        reply_text=tokenizer.decode(committed, skip_special_tokens=True),
                        token_count=len(report.token_ids),
                        steps=report.steps,
                    )
                )

        try:
            result = run_generation(
                model,
                tokenizer,
                plan.input_ids,
                request.settings,
                observer=Observer(),
                should_stop=lambda: self.cancels.is_cancelled(request_id),
                past_key_values=plan.past_key_values,
                cached_tokens=plan.cached_tokens,
                keep_prefix=plan.keep_prefix,
            )
        finally:
            self.cancels.forget(request_id)
        # The copy taken before the reply: valid whatever the reply did (cancelled, cut by length).
        self.caches.remember(request.conversation_id, plan.full_ids[: plan.keep_prefix], result.prefix_cache)
        text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        self.emit(p.Done(request_id, result.finish_reason, text, result.token_ids, result.stats))

    def _emit_cancelled_before_start(self, request: p.Generate) -> None:
        self.cancels.forget(request.request_id)
        stats = p.GenerationStats(0.0, 0.0, 0, 0.0, 0, 0.0, 0.0, 0, 0, 0)
        self.emit(p.Done(request.request_id, "cancelled", "", [], stats))

    def _probe_hardware(self, request: p.ProbeHardware) -> None:
        try:
            from engine.hardware import probe
        except ImportError:
            raise EngineError("internal", "The hardware check is not available in this build.") from None
        self.emit(p.HardwareReport(request.request_id, probe()))

    def _after_out_of_memory(self) -> None:
        # Cached conversations are the first thing to give back; the model stays loaded.
        self.caches.clear()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _PieceTable:
    """Decoded text of single tokens, cached: a draft needs one piece per canvas position."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def of(self, token_ids: list[int]) -> list[str]:
        cache = self.cache
        missing = [t for t in set(token_ids) if t not in cache]
        if missing:
            for token, text in zip(missing, self.tokenizer.batch_decode([[t] for t in missing])):
                cache[token] = text
        return [cache[t] for t in token_ids]


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _out_of_memory_message() -> str:
    return (
        "The GPU ran out of memory while generating. Try a shorter reply length or a new chat, "
        "or close other programs that use the GPU."
    )


def read_requests(stdin: IO[bytes], requests: queue.Queue, cancels: CancelRegistry, emit) -> None:
    """Reader thread: decodes lines; cancels act at once, everything else is queued in order."""
    for raw in iter(stdin.readline, b""):
        line = raw.strip()
        if not line:
            continue
        try:
            request = p.decode(line, p.REQUEST_TYPES)
        except p.ProtocolError as exc:
            log.warning("dropped a malformed request: %s", exc)
            emit(
                p.Error(
                    p.request_id_of(line),
                    "malformed_message",
                    f"The engine could not read a request ({exc}).",
                    recoverable=True,
                )
            )
            continue
        if isinstance(request, p.Cancel):
            cancels.cancel(request.target_request_id)
            continue
        requests.put(request)
    log.info("stdin closed: the GUI is gone, shutting down")
    cancels.everything.set()
    requests.put(None)


def serve(stdin: IO[bytes], stdout: IO[str]) -> int:
    channel = EventChannel(stdout)
    if test_switches.wants_garbage_stdout():
        channel.write_raw("this line is not JSON (test switch)")
    cancels = CancelRegistry()
    requests: queue.Queue = queue.Queue()
    engine = Engine(channel.send, cancels)
    reader = threading.Thread(
        target=read_requests, args=(stdin, requests, cancels, channel.send), name="request-reader", daemon=True
    )
    reader.start()
    status = EXIT_OK
    try:
        while True:
            request = requests.get()
            if request is None:
                break
            outcome = engine.handle(request)
            if outcome is not None:
                status = outcome
                break
    except BaseException as exc:  # the loop itself broke: say so, then exit non-zero
        log.exception("engine loop failed")
        channel.send(p.Error("", "internal", f"The engine stopped: {exc}", recoverable=False))
        status = EXIT_FATAL
    finally:
        channel.close()
    return status


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("CANVAS_CHAT_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    faulthandler.enable(sys.stderr)


def main(argv: list[str] | None = None) -> int:
    # Nothing leaves the machine but model downloads the user asked for.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    _setup_logging()
    # stdout is the protocol: keep a private handle to it and point fd 1 at stderr, so a
    # stray print from any library (or C code) cannot corrupt the event stream.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", newline="\n")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    log.info("engine worker %s started (pid %s, protocol %s)", __version__, os.getpid(), p.PROTOCOL_VERSION)
    status = serve(sys.stdin.buffer, protocol_out)
    try:
        protocol_out.close()
    except OSError:
        pass
    log.info("engine worker exiting with status %s", status)
    logging.shutdown()
    # Skip interpreter teardown: torch's background threads can delay a clean exit by seconds.
    os._exit(status)
