"""`ChatBackend`: what the conversation controller needs from whatever writes the replies, the
local worker (`app.worker.engine_client.EngineClient`) or a remote server (`app.remote.backend`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from engine.protocol import ChatMessage, GenerationSettings


class ChatBackend(Protocol):
    """Calls return at once; results arrive as Qt signals carrying `engine.protocol` events:
    draft_received/draft_arrived (Draft; local only), canvas_committed (CanvasCommitted),
    generation_finished (Done, finish_reason "cancelled" after cancel()), generation_failed
    (Error), generation_interrupted (request id: the engine or the connection went away)."""

    draft_received: Any
    draft_arrived: Any
    canvas_committed: Any
    generation_finished: Any
    generation_failed: Any
    generation_interrupted: Any

    def generate(
        self,
        conversation_id: str,
        messages: Sequence[ChatMessage],
        system_prompt: str = "",
        settings: GenerationSettings | None = None,
        thinking: bool = False,
    ) -> str: ...

    def cancel(self, request_id: str) -> None: ...


def answered_by(backend: ChatBackend) -> str:
    """Which backend and model writes a reply, in words: "Remote · gemma at gpu-box:8000",
    "Local · diffusiongemma-26B-A4B-it" (kept with the reply, shown in the status bar)."""
    label = getattr(backend, "answered_by", None)
    if isinstance(label, str):
        return label
    info = getattr(backend, "model_info", None)
    if info is None:
        return "Local engine"
    return f"Local \u00b7 {Path(info.model).name or info.model}"
