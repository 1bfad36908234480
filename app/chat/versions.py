"""The versions of a reply rewritten in place (each its text and token ids, one of them current),
and the state of a rewrite in progress that the transcript draws. Plain Python, no Qt."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


CHARACTERS_PER_TOKEN = 4  # about, in English: only sizes the noise shown before the first draft


@dataclass(frozen=True)
class ReplyVersion:
    content: str
    token_ids: tuple[int, ...]
    # The [start, end) characters of `content` that the rewrite which made this version wrote;
    # None for the reply as first generated.
    rewritten: tuple[int, int] | None = None
    instruction: str = ""
    created: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ReplyVersions:
    """Every version of a rewritten reply, oldest first; `current` is the one shown and sent on."""

    items: tuple[ReplyVersion, ...]
    current: int

    @classmethod
    def first(cls, content: str, token_ids: tuple[int, ...]) -> ReplyVersions:
        return cls((ReplyVersion(content, tuple(token_ids), created=0.0),), 0)

    @property
    def shown(self) -> ReplyVersion:
        return self.items[self.current]

    @property
    def can_undo(self) -> bool:
        return self.current > 0

    @property
    def can_redo(self) -> bool:
        return self.current < len(self.items) - 1

    def with_rewrite(self, version: ReplyVersion) -> ReplyVersions:
        """A new current version; versions undone before it are dropped (as in any editor's undo)."""
        items = self.items[: self.current + 1] + (version,)
        return ReplyVersions(items, len(items) - 1)

    def moved(self, delta: int) -> ReplyVersions:
        return ReplyVersions(self.items, max(0, min(len(self.items) - 1, self.current + delta)))

    def to_json(self) -> str:
        return json.dumps(
            {
                "current": self.current,
                "items": [
                    {
                        "content": v.content,
                        "token_ids": list(v.token_ids),
                        "rewritten": list(v.rewritten) if v.rewritten is not None else None,
                        "instruction": v.instruction,
                        "created": v.created,
                    }
                    for v in self.items
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ReplyVersions | None:
        """None for a value this version cannot read (the message then shows its current text only)."""
        try:
            data: Any = json.loads(text)
            items = tuple(
                ReplyVersion(
                    content=str(item["content"]),
                    token_ids=tuple(int(t) for t in item["token_ids"]),
                    rewritten=tuple(item["rewritten"]) if item.get("rewritten") else None,  # type: ignore[arg-type]
                    instruction=str(item.get("instruction", "")),
                    created=float(item.get("created", 0.0)),
                )
                for item in data["items"]
            )
            current = int(data["current"])
        except (ValueError, TypeError, KeyError):
            return None
        if not items or not 0 <= current < len(items):
            return None
        return cls(items, current)


@dataclass(frozen=True)
class SpanPart:
    """The latest draft of the span's part in one canvas (a span can cross canvases)."""

    canvas_index: int
    token_start: int
    token_end: int
    pieces: tuple[str, ...]
    settled: tuple[bool, ...]


@dataclass(frozen=True)
class RewriteInProgress:
    """What a reply being rewritten shows: its old text, with the span animating in place."""

    request_id: str
    old_text: str
    span_chars: tuple[int, int]  # the selection until the worker says how it widened it
    span_tokens: tuple[int, int] | None = None
    parts: tuple[SpanPart, ...] = ()
    step_index: int = 0
    max_steps: int = 0
    instruction: str = ""

    @property
    def before(self) -> str:
        return self.old_text[: self.span_chars[0]]

    @property
    def after(self) -> str:
        return self.old_text[self.span_chars[1] :]

    def with_draft(self, draft: Any) -> RewriteInProgress:
        """With a `SpanDraft` event applied (latest wins per canvas)."""
        part = SpanPart(draft.canvas_index, draft.span_start, draft.span_end, tuple(draft.pieces), tuple(draft.settled))
        parts = tuple(p for p in self.parts if p.canvas_index != part.canvas_index) + (part,)
        span_chars = tuple(draft.span_chars) if len(draft.span_chars) == 2 else self.span_chars
        span_tokens = tuple(draft.span_tokens) if len(draft.span_tokens) == 2 else self.span_tokens
        return RewriteInProgress(
            self.request_id,
            self.old_text,
            span_chars,  # type: ignore[arg-type]
            span_tokens,  # type: ignore[arg-type]
            tuple(sorted(parts, key=lambda p: p.canvas_index)),
            draft.step_index,
            draft.max_steps,
            self.instruction,
        )

    def segments(self) -> list[tuple[str, bool]]:
        """(text, settled) for each span position: a part's pieces (noise where unsettled), then
        noise for the tokens of canvases not reached yet. Before the first draft: noise, about a
        cell per token of the selection (the span dissolves before it settles)."""
        if not self.parts:
            selected = self.old_text[self.span_chars[0] : self.span_chars[1]]
            return [("", False)] * max(1, round(len(selected) / CHARACTERS_PER_TOKEN))
        segments = [(piece, flag) for part in self.parts for piece, flag in zip(part.pieces, part.settled)]
        reached = self.parts[-1].token_end
        if self.span_tokens is not None:
            segments += [("", False)] * max(0, self.span_tokens[1] - reached)
        return segments

    def counter_text(self) -> str:
        if not self.parts:
            return "rewriting the selection\u2026"
        canvas = self.parts[-1].canvas_index
        return f"rewriting \u00b7 canvas {canvas + 1} \u00b7 step {self.step_index + 1}/{self.max_steps}"
