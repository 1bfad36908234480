"""An OpenAI `/v1/chat/completions` SSE stream (vLLM's shape) turned into the engine's events:
one `CanvasCommitted` per content chunk, and a `Done` with stats from `usage`. Plain Python, no Qt."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from engine.protocol import CanvasCommitted, Done, Error, GenerationStats

# OpenAI finish reasons → the engine's (a tool call ends the turn like an end-of-turn token).
_FINISH_REASONS = {"stop": "eos", "tool_calls": "eos", "length": "length", "content_filter": "eos"}


class StreamFailed(Exception):
    """The server sent an error inside the stream (`data: {"error": {...}}`)."""


def sse_data(line: str) -> str | None:
    """The payload of one SSE line (`data: ...`), or None for comments, blanks and other fields."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


def error_reason(body: Any) -> str:
    """The human reason in an error body: OpenAI's `{"error": {"message"}}`, vLLM's older
    `{"object": "error", "message"}`, or FastAPI's `{"detail"}`; "" when there is none."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
        for key in ("message", "detail"):
            if isinstance(body.get(key), str):
                return body[key]
    return ""


@dataclass
class ChatStreamReader:
    """Feeds on SSE lines; returns the events each line produces. `finished` once the server said
    how the reply ended (a finish_reason, or `[DONE]`)."""

    request_id: str
    started: float = field(default_factory=time.monotonic)
    text: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    canvases: int = 0
    finish_reason: str = ""
    usage: dict[str, Any] | None = None
    first_canvas_s: float = 0.0
    saw_done: bool = False

    @property
    def finished(self) -> bool:
        return self.saw_done or bool(self.finish_reason)

    def feed(self, line: str) -> list[CanvasCommitted]:
        data = sse_data(line)
        if data is None or data == "":
            return []
        if data == "[DONE]":
            self.saw_done = True
            return []
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            return []  # a malformed line is dropped, not fatal
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk:
            raise StreamFailed(error_reason(chunk) or "the server reported an error")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        events = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            piece = ""
            if isinstance(delta.get("reasoning_content"), str):
                self.reasoning += delta["reasoning_content"]
            elif isinstance(delta.get("reasoning"), str):  # newer vLLM names the field "reasoning"
                self.reasoning += delta["reasoning"]
            if isinstance(delta.get("content"), str):
                piece += delta["content"]
            for call in delta.get("tool_calls") or []:
                piece += self._add_tool_call(call)
            if piece:
                events.append(self._commit(piece))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _add_tool_call(self, call: dict[str, Any]) -> str:
        """vLLM streams a call as an opening delta (id, name) and argument fragments by index."""
        index = call.get("index", len(self.tool_calls))
        function = call.get("function") or {}
        while len(self.tool_calls) <= index:
            self.tool_calls.append({"id": "", "name": "", "arguments": ""})
        entry = self.tool_calls[index]
        entry["id"] = call.get("id") or entry["id"]
        opening = bool(function.get("name")) and not entry["name"]
        entry["name"] = function.get("name") or entry["name"]
        arguments = function.get("arguments") or ""
        entry["arguments"] += arguments
        # Shown in the reply as it streams: "Tool call: name(" + the arguments, closed at the end.
        return (f"\n\nTool call: {entry['name']}(" if opening else "") + arguments

    def _commit(self, piece: str) -> CanvasCommitted:
        if not self.canvases:
            self.first_canvas_s = time.monotonic() - self.started
        self.text += piece
        event = CanvasCommitted(
            request_id=self.request_id,
            canvas_index=self.canvases,
            text=piece,
            reply_text=self.text,
            token_count=0,
            steps=0,
        )
        self.canvases += 1
        return event

    def final_text(self) -> str:
        return self.text + (")" if self.tool_calls else "")

    def done(self, cancelled: bool = False) -> Done:
        wall = max(time.monotonic() - self.started, 1e-6)
        usage = self.usage or {}
        new_tokens = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        stats = GenerationStats(
            time_to_first_draft_s=self.first_canvas_s,
            wall_s=wall,
            new_tokens=new_tokens,
            tokens_per_s=new_tokens / wall,
            decoder_forwards=0,  # the server does not say
            tokens_per_forward=0.0,
            steps_per_canvas=0.0,
            canvases=self.canvases,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
        )
        reason = "cancelled" if cancelled else _FINISH_REASONS.get(self.finish_reason, "eos")
        return Done(
            request_id=self.request_id,
            finish_reason=reason,
            text=self.final_text(),
            token_ids=[],
            stats=stats,
            reasoning=self.reasoning,
        )


def http_error(request_id: str, status: int, body: Any, retry_after: str = "") -> Error:
    """A plain message for an HTTP error answer, with the server's own reason."""
    reason = error_reason(body) or (body if isinstance(body, str) else "")
    reason = reason.strip()[:300]
    said = f": \u201c{reason}\u201d." if reason else "."
    if status in (401, 403):
        text = (
            f"The server refused the API key ({status}){said} Check the key in Model \u25b8 Connect to a server\u2026"
        )
    elif status == 429:
        wait = f" It asks to wait {retry_after} s." if retry_after else ""
        text = f"The server is busy: too many requests (429){said}{wait} Try again in a moment."
    elif status == 503:
        text = f"The server cannot answer right now (503 Service Unavailable){said} Try again in a moment."
    elif status == 404:
        text = f"The server does not know this model or endpoint (404){said}"
    else:
        text = f"The server answered with an error ({status}){said}"
    return Error(request_id=request_id, code="internal", message=text, recoverable=True, detail=str(status))
