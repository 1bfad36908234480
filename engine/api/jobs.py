"""One HTTP request as a job of the engine loop: the prompt, the denoising run, the parsed reply.

The server thread puts an `ApiJob` on the worker's request queue; the loop thread runs it here,
between the GUI's requests, and reports through the job's sink (never stdout).
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.api.wire import ApiRequest, new_id, openai_finish_reason
from engine.chat_format import decode_for_parsing, encode_chat, response_template
from engine.errors import EngineError

log = logging.getLogger("canvas_chat.engine.api")

DEFAULT_MAX_TOKENS = 2048  # a reply's length when the client sends no max_tokens


@dataclass(frozen=True)
class ApiDelta:
    """What one committed canvas added to the reply, split by the response parser."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()  # OpenAI tool-call objects with their index


@dataclass(frozen=True)
class ApiDraftView:
    canvas_index: int
    step_index: int
    max_steps: int
    text: str


@dataclass(frozen=True)
class ApiFinished:
    finish_reason: str  # OpenAI's: "stop", "length", "tool_calls"; "cancelled" when the client left
    content: str
    reasoning: str
    tool_calls: tuple[dict[str, Any], ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    tokens_per_s: float


@dataclass(frozen=True)
class ApiFailed:
    status: int
    message: str
    code: str


@dataclass
class ApiJob:
    """Queued next to the GUI's requests; `request_id` is what a cancel names."""

    request: ApiRequest
    sink: Callable[[Any], None]
    request_id: str = field(default_factory=lambda: new_id("api"))


def history_key(messages: list[dict[str, Any]]) -> str:
    """Cache key of a conversation sent without an id: a client resends the whole history."""
    return "api:" + hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def run_api_job(engine, job: ApiJob) -> None:
    """Runs on the loop thread; whatever happens, the sink gets exactly one ApiFinished or ApiFailed."""
    try:
        _run(engine, job)
    except EngineError as exc:
        status = {"no_model_loaded": 503, "bad_settings": 400, "context_too_long": 400}.get(exc.code, 500)
        job.sink(ApiFailed(status, exc.message, exc.code))
    except Exception as exc:
        from engine.worker import _is_out_of_memory, _out_of_memory_message

        log.exception("API request %s failed", job.request_id)
        if _is_out_of_memory(exc):
            engine._after_out_of_memory()
            job.sink(ApiFailed(500, _out_of_memory_message(), "out_of_memory"))
        else:
            job.sink(ApiFailed(500, f"The engine hit an unexpected error: {exc}", "internal"))
            log.debug("%s", traceback.format_exc(limit=6))
    finally:
        engine.cancels.forget(job.request_id)


def _run(engine, job: ApiJob) -> None:
    from transformers.cli.serving.utils import ReasoningText, ToolCall, response_events_to_chunks
    from transformers.utils.chat_parsing import ResponseParser

    from engine.generation import StepObserver, run_generation

    request = job.request
    if engine.loaded is None:
        raise EngineError("no_model_loaded", "No model is loaded yet: load one in Canvas Chat first.")
    if engine.cancels.is_cancelled(job.request_id):
        job.sink(ApiFinished("cancelled", "", "", (), 0, 0, 0, 0.0))
        return
    tokenizer = engine.loaded.tokenizer
    plan_key = ""
    past_key_values, cached_tokens, keep_prefix = None, 0, 0
    if request.kind == "completion":
        input_ids = tokenizer.encode(request.prompt, add_special_tokens=True)
        full_ids = input_ids
        parser = None
    else:
        if _cacheable(request):
            plan_key = history_key(request.messages[:-1])
            plan = engine.caches.plan(tokenizer, plan_key, request.messages, True)
            input_ids, full_ids = plan.input_ids, plan.full_ids
            past_key_values, cached_tokens, keep_prefix = plan.past_key_values, plan.cached_tokens, plan.keep_prefix
        else:
            input_ids = full_ids = encode_chat(tokenizer, request.messages, request.tools, request.thinking)
        parser = ResponseParser(
            response_template(tokenizer), prefix=tokenizer.decode(full_ids), tools=request.tools
        )

    settings = _with_reply_budget(engine.loaded.model, request.settings, cached_tokens + len(input_ids))
    sink = job.sink
    stream = request.stream
    stops = request.stop
    committed: list[int] = []
    state = {"raw": "", "content": "", "held": "", "stopped": False, "tool_calls": []}
    cancels = engine.cancels

    def take_content(text: str, final: bool) -> str:
        """Content up to a stop sequence; the tail that may start one is held back until it cannot."""
        if state["stopped"]:
            return ""
        text = state["held"] + text
        state["held"] = ""
        if stops:
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                state["stopped"] = True
                cancels.cancel(job.request_id)  # the rest of the reply is not wanted
                return text[:cut]
            if not final:
                keep = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
                if keep:
                    text, state["held"] = text[:-keep], text[-keep:]
        return text

    def split(events: list[dict], final: bool) -> ApiDelta:
        content, reasoning, calls = [], [], []
        for item in response_events_to_chunks(events):
            if isinstance(item, ReasoningText):
                reasoning.append(str(item))
            elif isinstance(item, ToolCall):
                call = {
                    "index": len(state["tool_calls"]),
                    "id": new_id("call"),
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                state["tool_calls"].append(call)
                calls.append(call)
            elif isinstance(item, str):
                content.append(item)
        text = take_content("".join(content), final)
        state["content"] += text
        return ApiDelta(text, "".join(reasoning), tuple(calls))

    def new_raw_text() -> str:
        if parser is None:
            raw = tokenizer.decode(committed, skip_special_tokens=True)
        else:
            raw = decode_for_parsing(tokenizer, committed)
        safe = raw.rstrip("\ufffd")  # a character split across canvases waits for its other bytes
        delta = safe[len(state["raw"]) :]
        state["raw"] = safe
        return delta

    class Observer(StepObserver):
        def on_step(self, report) -> None:
            if stream and request.stream_drafts:
                text = tokenizer.decode(report.token_ids, skip_special_tokens=True)
                sink(ApiDraftView(report.canvas_index, report.step_index, report.max_steps, text))

        def on_canvas(self, report) -> None:
            committed.extend(report.token_ids)
            if parser is None:
                delta = ApiDelta(take_content(new_raw_text(), False))
                state["content"] += delta.content
            else:
                delta = split(parser.feed(new_raw_text()), False)
            if stream and (delta.content or delta.reasoning or delta.tool_calls):
                sink(delta)

    try:
        result = run_generation(
            engine.loaded.model,
            tokenizer,
            input_ids,
            settings,
            observer=Observer(),
            should_stop=lambda: cancels.is_cancelled(job.request_id),
            past_key_values=past_key_values,
            cached_tokens=cached_tokens,
            keep_prefix=keep_prefix,
        )
    except BaseException:
        if plan_key:
            engine.caches.drop(plan_key)
        raise
    reasoning = ""
    if parser is None:
        tail = take_content(new_raw_text(), True)
        state["content"] += tail
        final_delta = ApiDelta(tail)
    else:
        tail_events = parser.feed(new_raw_text())
        message, closing = parser.finalize()
        final_delta = split(tail_events + closing, True)
        reasoning = message.get("reasoning_content") or ""
    if stream and (final_delta.content or final_delta.reasoning or final_delta.tool_calls):
        sink(final_delta)
    if result.finish_reason == "cancelled" and not state["stopped"]:
        finish = "cancelled"
    else:
        finish = openai_finish_reason(result.finish_reason, bool(state["tool_calls"]), state["stopped"])
    if plan_key and result.finish_reason == "eos" and not state["tool_calls"]:
        # Kept under the history the client sends back next: this conversation up to its last
        # user turn, which is all a follow-up can share with it (docs/protocol.md).
        after = [*request.messages, {"role": "assistant", "content": state["content"]}]
        engine.caches.remember(history_key(after), full_ids[:keep_prefix], result.prefix_cache)
    stats = result.stats
    log.info("API request %s: %s after %d tokens (%d cached)", job.request_id, finish, stats.new_tokens, stats.cached_tokens)
    sink(
        ApiFinished(
            finish,
            state["content"],
            reasoning,
            tuple(state["tool_calls"]),
            stats.prompt_tokens,
            stats.new_tokens,
            stats.cached_tokens,
            stats.tokens_per_s,
        )
    )


def _with_reply_budget(model, settings, prompt_tokens: int):
    """Without max_tokens a reply may run to DEFAULT_MAX_TOKENS, within the model's context.

    The checkpoint's own default is a single canvas, which cuts most answers short.
    """
    if settings.max_new_tokens is not None:
        return settings
    import dataclasses

    budget = DEFAULT_MAX_TOKENS
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    canvas = model.config.canvas_length
    if limit:
        budget = min(budget, (limit - prompt_tokens) // canvas * canvas)
    return dataclasses.replace(settings, max_new_tokens=max(budget, canvas))


def _cacheable(request: ApiRequest) -> bool:
    """Plain conversations only: tools and thinking render the history differently."""
    return (
        not request.tools
        and not request.thinking
        and all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in request.messages)
        and all(m["role"] in ("system", "user", "assistant") for m in request.messages)
    )
