"""The worker process: a reader thread, one loop that owns torch and the GPU, a writer thread
(the threads and their queues: `engine.worker_io`).

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
from collections.abc import Callable
from typing import IO, Any

from engine import __version__, test_switches
from engine import protocol as p
from engine.errors import EngineError
from engine.images import model_accepts_images
from engine.worker_io import CancelRegistry, DeferredDraft, EventChannel, IoFailure, read_requests

log = logging.getLogger("canvas_chat.engine.worker")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_PROTOCOL_MISMATCH = 3
# How long a worker whose GUI is gone (stdin closed) may finish its current step before it exits anyway.
EOF_GRACE_S = 5.0


class Engine:
    """The loop's state: the loaded model and conversation caches. Only the loop thread calls it."""

    def __init__(self, emit, cancels: CancelRegistry):
        self.emit = emit
        self.cancels = cancels
        self.loaded = None
        self.pieces: _PieceTable | None = None
        self.submit = None  # puts a request on the loop's queue; set by whoever runs the loop
        self.api_server = None  # engine.api.server.ApiServer while the local server is on
        from engine.conversations import ConversationCaches

        self.caches = ConversationCaches()
        self._reply_started = False  # whether the GUI has had an event of the reply being generated

    # -- requests -------------------------------------------------------------------------

    def handle(self, request: Any) -> int | None:
        """Serves one request; returns an exit status when the worker must stop."""
        try:
            if isinstance(request, p.Hello):
                return self._hello(request)
            if isinstance(request, p.LoadModel):
                self._load(request)
            elif isinstance(request, p.Generate):
                self._generate_retrying_after_out_of_memory(request)
            elif isinstance(request, p.RewriteSpan):
                self._rewrite_span(request)
            elif isinstance(request, p.Unload):
                self._unload()
                self.emit(p.Unloaded(request.request_id))
            elif isinstance(request, p.ProbeHardware):
                self._probe_hardware(request)
            elif isinstance(request, (p.StartApiServer, p.StopApiServer)) or _is_api_job(request):
                self._handle_api(request)
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
        from engine.conversations import cuda_budget_of
        from engine.loading import load_model

        def progress(stage: str, message: str, fraction: float, **extra: int) -> None:
            self.emit(p.LoadProgress(request.request_id, stage, message, float(fraction), **extra))

        self._unload()
        test_switches.apply_load_fault()
        # INFO lines like these are what the app's crash banner shows of the worker's last moments.
        log.info("loading %s (device %s, quantization %s)", request.model, request.device, request.quantization)
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
        log.info("loaded %s on %s (%s) in %.1f s", loaded.source, loaded.device, loaded.quantization, loaded.load_s)
        self.caches.budget_bytes = cuda_budget_of(loaded)
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
                accepts_images=model_accepts_images(loaded.model, loaded.is_demo),
                context_window=_context_window(loaded.model),
                **_runtime_versions(),
            )
        )

    def _vision_plan(self, request: p.Generate, images: list[p.ImagePart]):
        """The whole prompt with its images' soft tokens, and the vision tower's inputs."""
        from engine.chat_format import encode_chat
        from engine.conversations import PromptPlan
        from engine.images import has_vision_tower, image_token_text, load_vision_tower, template_messages, vision_prompt

        loaded = self.loaded
        assert loaded is not None
        if not model_accepts_images(loaded.model, loaded.is_demo):
            what = "The demo model" if loaded.is_demo else f"{loaded.path.name}"
            raise EngineError("vision_unavailable", f"{what} cannot read images: it has no trained vision tower.")
        model, tokenizer = loaded.model, loaded.tokenizer
        if not has_vision_tower(model):
            log.info("loading the vision tower for the first image (request %s)", request.request_id)

            def progress(stage: str, message: str, fraction: float) -> None:
                self._reply_started = True
                self.emit(p.LoadProgress(request.request_id, stage, message, float(fraction)))

            load_vision_tower(model, loaded.path, progress)
        messages = template_messages(request.messages, image_token_text(model, tokenizer))
        if request.system_prompt.strip():
            messages.insert(0, {"role": "system", "content": request.system_prompt})
        prompt = vision_prompt(model, encode_chat(tokenizer, messages, thinking=request.thinking), images)
        return PromptPlan(prompt.token_ids, None, 0, 0), prompt.model_inputs

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

    def _generate_retrying_after_out_of_memory(self, request: p.Generate) -> None:
        """A reply that ran out of GPU memory while other conversations' caches were held is tried
        once more without them, if the GUI has seen nothing of it yet (no draft, commit or
        progress): the usual case, since the prompt's encoding and the first forward peak first.
        The failed attempt spent this conversation's own cache too, so the retry re-encodes it."""
        self._reply_started = False
        try:
            try:
                self._generate(request)
                return
            except Exception as exc:
                if not (_is_out_of_memory(exc) and self.caches.holds_other_than(request.conversation_id)) or self._reply_started:
                    raise
                log.warning("request %s ran out of GPU memory before its first draft: dropping %d other "
                            "conversations' caches and trying once more", request.request_id, len(self.caches))
            # Out of the except block, so that the traceback's frames (and their tensors) are gone.
            self._after_out_of_memory()
            self._generate(request)  # a cancel that came during the failed attempt ends it before it starts
        finally:
            self.cancels.forget(request.request_id)

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
        messages = [{"role": m.role, "content": m.text} for m in request.messages]
        if request.system_prompt.strip():
            messages.insert(0, {"role": "system", "content": request.system_prompt})
        images = [part for m in request.messages for part in m.images]
        vision_inputs = None
        if images:
            plan, vision_inputs = self._vision_plan(request, images)
        elif request.thinking:
            plan = _thinking_plan(tokenizer, messages)
        else:
            plan = self.caches.plan(tokenizer, request.conversation_id, messages, request.reuse_cache)
        # INFO lines like these are what the app's crash banner shows of the worker's last moments.
        log.info(
            "generating a reply (request %s): %d prompt tokens, %d of them cached",
            request_id, len(plan.full_ids), plan.cached_tokens,
        )
        pieces = self.pieces
        emit = self.emit
        defer = isinstance(getattr(emit, "__self__", None), EventChannel)
        committed: list[int] = []
        engine = self

        class Observer(StepObserver):
            def on_step(self, report: StepReport) -> None:
                engine._reply_started = True
                def build() -> p.Draft:
                    return p.Draft(
                        request_id,
                        canvas_index=report.canvas_index,
                        step_index=report.step_index,
                        max_steps=report.max_steps,
                        text=tokenizer.decode(report.token_ids, skip_special_tokens=True),
                        pieces=pieces.of(report.token_ids),
                        settled=report.settled,
                        entropy=report.entropy_buckets,
                    )

                # The event writer decodes it on its own thread; any other receiver gets it built.
                emit(DeferredDraft(request_id, report.canvas_index, build) if defer else build())

            def on_canvas(self, report: CanvasReport) -> None:
                engine._reply_started = True
                committed.extend(report.token_ids)
                if request.thinking:
                    reply_text = _answer_of(tokenizer, plan.full_ids, committed)
                else:
                    reply_text = tokenizer.decode(committed, skip_special_tokens=True)
                emit(
                    p.CanvasCommitted(
                        request_id,
                        canvas_index=report.canvas_index,
                        text=tokenizer.decode(report.token_ids, skip_special_tokens=True),
                        reply_text=reply_text,
                        token_count=len(report.token_ids),
                        steps=report.steps,
                    )
                )

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
            vision_inputs=vision_inputs,
        )
        text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        reasoning = ""
        if request.thinking:
            from engine.chat_format import parse_reply

            parsed = parse_reply(tokenizer, plan.full_ids, result.token_ids)
            text, reasoning = parsed.get("content") or "", parsed.get("reasoning_content") or ""
            self.caches.drop(request.conversation_id)  # a thinking turn re-renders differently next time
        elif images:
            self.caches.drop(request.conversation_id)  # a prompt with images is encoded whole each turn
        else:
            # The copy taken before the reply: valid whatever the reply did (cancelled, cut by length).
            self.caches.remember(request.conversation_id, plan.full_ids[: plan.keep_prefix], result.prefix_cache)
        log.info(
            "reply %s ended (%s): %d tokens in %.2f s", request_id, result.finish_reason,
            result.stats.new_tokens, result.stats.wall_s,
        )
        self.emit(p.Done(request_id, result.finish_reason, text, result.token_ids, result.stats, reasoning))

    def _rewrite_span(self, request: p.RewriteSpan) -> None:
        """Re-denoises a span of a reply in place (`engine.rewrite`); the rest is held bit for bit."""
        from engine.rewrite import SpanDraftReport, character_ranges, rewrite_span, token_span_of_characters

        request_id = request.request_id
        if self.loaded is None:
            raise EngineError("no_model_loaded", "No model is loaded yet: load one before rewriting.")
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        reply_ids = list(request.reply_token_ids)
        span_start, span_end = request.span_start, request.span_end
        if request.span_unit == "characters":
            reply_text = tokenizer.decode(reply_ids, skip_special_tokens=True)
            span_start, span_end = token_span_of_characters(tokenizer, reply_ids, reply_text, span_start, span_end)
        # Where the whole span lies, sent with every draft: the GUI draws the old text around it.
        _, span_chars, _ = character_ranges(tokenizer, reply_ids, span_start, span_end)
        messages = [{"role": m.role, "content": m.text} for m in request.messages]
        if request.system_prompt.strip():
            messages.insert(0, {"role": "system", "content": request.system_prompt})
        pieces = self.pieces
        emit = self.emit

        def on_draft(report: SpanDraftReport) -> None:
            emit(
                p.SpanDraft(
                    request_id,
                    canvas_index=report.canvas_index,
                    step_index=report.step_index,
                    max_steps=report.max_steps,
                    span_start=report.start,
                    span_end=report.end,
                    text=tokenizer.decode(report.token_ids, skip_special_tokens=True),
                    pieces=pieces.of(report.token_ids),
                    settled=report.settled,
                    entropy=report.entropy_buckets,
                    span_tokens=[span_start, span_end],
                    span_chars=span_chars,
                )
            )

        try:
            if self.cancels.is_cancelled(request_id):
                result_ids, finish_reason, stats = reply_ids, "cancelled", None
            else:
                result = rewrite_span(
                    model,
                    tokenizer,
                    messages,
                    reply_ids,
                    span_start,
                    span_end,
                    request.settings,
                    instruction=request.instruction,
                    on_draft=on_draft,
                    should_stop=lambda: self.cancels.is_cancelled(request_id),
                )
                result_ids, finish_reason, stats = result.token_ids, result.finish_reason, result.stats
        finally:
            self.cancels.forget(request_id)
        text, rewritten, kept = character_ranges(tokenizer, result_ids, span_start, span_end)
        self.emit(
            p.SpanRewritten(
                request_id,
                finish_reason=finish_reason,
                text=text,
                token_ids=result_ids,
                span_start=span_start,
                span_end=span_end,
                rewritten=rewritten,
                kept=kept,
                stats=stats or p.GenerationStats(0.0, 0.0, 0, 0.0, 0, 0.0, 0.0, 0, 0, 0),
            )
        )

    def _emit_cancelled_before_start(self, request: p.Generate) -> None:
        self.cancels.forget(request.request_id)
        stats = p.GenerationStats(0.0, 0.0, 0, 0.0, 0, 0.0, 0.0, 0, 0, 0)
        self.emit(p.Done(request.request_id, "cancelled", "", [], stats))

    # -- the local API server (engine/api): requests queue here with the GUI's ---------------

    def _handle_api(self, request: Any) -> None:
        if isinstance(request, p.StartApiServer):
            self.start_api_server(request)
        elif isinstance(request, p.StopApiServer):
            self.stop_api_server()
            self.emit(p.ApiServerStopped(request.request_id))
        else:
            from engine.api.jobs import run_api_job

            run_api_job(self, request)

    def start_api_server(self, request: p.StartApiServer):
        from engine.api.server import ApiServer, BindRefused

        self.stop_api_server()
        if self.submit is None:
            raise EngineError("internal", "The engine loop cannot take HTTP requests.")
        emit, start_id = self.emit, request.request_id

        def record(entry) -> None:
            emit(p.ApiRequestLogged(start_id, entry.method, entry.path, entry.status, entry.prompt_tokens,
                                    entry.completion_tokens, entry.tokens_per_s, entry.wall_s))

        try:
            self.api_server = ApiServer(
                submit=self.submit,
                cancel=self.cancels.cancel,
                model_id=self._api_model_id,
                record=record,
                host=request.host,
                port=request.port,
                token=request.token,
                cors_origins=tuple(request.cors_origins),
            )
        except BindRefused as exc:
            raise EngineError(exc.code, exc.message) from None
        server = self.api_server
        log.info("local API server listening on %s", server.base_url)
        self.emit(p.ApiServerStarted(request.request_id, server.base_url, server.host, server.port))
        return server

    def stop_api_server(self) -> None:
        if self.api_server is not None:
            self.api_server.stop()
            self.api_server = None

    def _api_model_id(self) -> str | None:
        loaded = self.loaded  # read from the server thread: one attribute read, no torch
        if loaded is None:
            return None
        from pathlib import Path

        return Path(loaded.source).name if Path(loaded.source).is_dir() else loaded.source

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
    """Decoded text of single tokens, cached: a draft needs one piece per canvas position.

    Special tokens (pad, turn markers, ...) decode to "": the model predicts them too, and a
    draft must never show their markup; the view draws an empty settled position as a blank.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def of(self, token_ids: list[int]) -> list[str]:
        cache = self.cache
        missing = [t for t in set(token_ids) if t not in cache]
        if missing:
            texts = self.tokenizer.batch_decode([[t] for t in missing], skip_special_tokens=True)
            for token, text in zip(missing, texts):
                cache[token] = text
        return [cache[t] for t in token_ids]


def _thinking_plan(tokenizer, messages: list[dict[str, str]]):
    """A thinking turn is encoded whole: the template renders it unlike any cached history."""
    from engine.chat_format import encode_chat
    from engine.conversations import PromptPlan

    ids = encode_chat(tokenizer, messages, thinking=True)
    return PromptPlan(ids, None, 0, 0)


def _answer_of(tokenizer, prompt_ids: list[int], reply_ids: list[int]) -> str:
    """The answer so far without the thought channel (which Done carries as `reasoning`)."""
    from engine.chat_format import parse_reply

    return parse_reply(tokenizer, prompt_ids, reply_ids).get("content") or ""


def _context_window(model: Any) -> int:
    """The model's positions (its text config's max_position_embeddings); 0 when it has none."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text_config, "max_position_embeddings", 0)
    return window if isinstance(window, int) and window > 0 else 0


def _runtime_versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch_version": str(torch.__version__), "transformers_version": str(transformers.__version__)}


def _is_api_job(request: Any) -> bool:
    return type(request).__name__ == "ApiJob" and type(request).__module__ == "engine.api.jobs"


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _out_of_memory_message() -> str:
    return (
        "The GPU ran out of memory while generating. Try a shorter reply length or a new chat, "
        "or close other programs that use the GPU."
    )


def serve(stdin: IO[bytes], stdout: IO[str], on_stdin_closed: Callable[[], None] = lambda: None) -> int:
    cancels = CancelRegistry()
    requests: queue.Queue = queue.Queue()

    def writer_failed(reason: str) -> None:
        cancels.everything.set()
        requests.put(IoFailure(reason))

    channel = EventChannel(stdout, on_failure=writer_failed)
    if test_switches.wants_garbage_stdout():
        channel.write_raw("this line is not JSON (test switch)")
    engine = Engine(channel.send, cancels)
    engine.submit = requests.put
    reader = threading.Thread(
        target=read_requests, args=(stdin, requests, cancels, channel.send, on_stdin_closed), name="request-reader", daemon=True
    )
    reader.start()
    status = EXIT_OK
    try:
        while True:
            request = requests.get()
            if request is None:
                break
            if isinstance(request, IoFailure):
                log.critical("engine stopping: %s", request.reason)
                channel.send(p.Error("", "internal", f"The engine stopped: {request.reason}.", recoverable=False))
                status = EXIT_FATAL
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
        engine.stop_api_server()
        channel.close()
    return status


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("CANVAS_CHAT_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    faulthandler.enable(sys.stderr)


def _exit_unless_done_within(grace_s: float) -> None:
    """Armed at stdin's end: the loop was told to stop after its current step; a step (or a load)
    that outlasts `grace_s` (hung, or very long) must not keep an orphan holding the GPU."""

    def exit_now() -> None:
        log.error("stdin closed %.0f s ago and the engine is still busy: exiting now", grace_s)
        logging.shutdown()
        os._exit(EXIT_FATAL)

    timer = threading.Timer(grace_s, exit_now)
    timer.daemon = True
    timer.start()


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
    status = serve(sys.stdin.buffer, protocol_out, lambda: _exit_unless_done_within(EOF_GRACE_S))
    try:
        protocol_out.close()
    except OSError:
        pass
    log.info("engine worker exiting with status %s", status)
    logging.shutdown()
    # Skip interpreter teardown: torch's background threads can delay a clean exit by seconds.
    os._exit(status)
