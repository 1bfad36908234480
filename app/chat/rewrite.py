"""`SpanRewrites`: rewrite a selected span of a reply in place through the engine, and undo/redo
between the reply's versions. Part of `ConversationController` (its `rewrites` attribute).

The reply keeps its old text (and its `Message.rewrite` says what the span shows) until the
engine's `span_rewritten` arrives; a cancel, an error or a dead worker leave it as it was. Every
version is stored with the message (`Message.versions`), so undo survives a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.chat.messages import Message
from app.chat.versions import ReplyVersion, ReplyVersions, RewriteInProgress
from engine.protocol import ChatMessage, Error, SpanDraft, SpanRewritten

log = logging.getLogger("canvas_chat.rewrite")


@dataclass
class _ActiveRewrite:
    request_id: str
    message: Message
    state: RewriteInProgress


class SpanRewrites(QObject):
    """Signals: started(message id); finished(message id, "rewritten" | "unchanged" | "cancelled" |
    "failed");
    failed(message id, text for the user: nothing changed); versions_changed(message id)."""

    started = Signal(str)
    finished = Signal(str, str)
    failed = Signal(str, str)
    versions_changed = Signal(str)

    def __init__(self, controller: Any, client: Any) -> None:
        super().__init__(controller)
        self._controller = controller
        self._client = client
        self._active: _ActiveRewrite | None = None
        self._hooks = [
            (client.span_draft_arrived, self._on_client_span_draft_arrived),
            (client.span_draft_received, self._on_client_span_draft_received),
            (client.span_rewritten, self._on_client_span_rewritten),
            (client.generation_failed, self._on_client_generation_failed),
            (client.generation_interrupted, self._on_client_generation_interrupted),
        ]
        for signal, slot in self._hooks:
            signal.connect(slot)

    def close(self) -> None:
        for signal, slot in self._hooks:
            signal.disconnect(slot)
        self._hooks = []

    @property
    def busy(self) -> bool:
        return self._active is not None

    @property
    def active_message_id(self) -> str:
        return self._active.message.id if self._active else ""

    def live_message(self, message: Message) -> Message:
        """The in-memory message being rewritten in place of its stored copy (on reopening a chat)."""
        active = self._active
        return active.message if active is not None and active.message.id == message.id else message

    # ------------------------------------------------------------------ rewriting

    def why_not(self, message_id: str) -> str:
        """Why this reply cannot be rewritten now, in words for the user ("" when it can)."""
        controller = self._controller
        message = controller.transcript.get(message_id)
        if message is None or message.role != "assistant":
            return "Only the model's replies can be rewritten."
        if controller.is_generating:
            return "A reply is being written. Wait for it to finish, or stop it, then rewrite."
        if message.status not in ("finished", "stopped"):
            return "This reply did not finish, so it cannot be rewritten. Regenerate it first."
        if (message.stats or {}).get("reasoning"):
            return "Replies written with thinking on cannot be rewritten in place yet."
        if not message.token_ids:
            return (
                "This reply has no stored tokens to rewrite (it was written by an older Canvas Chat, "
                "or stopped mid-canvas). Regenerate it to rewrite parts of it."
            )
        if controller.backend is not self._client:
            return "Rewriting a selection needs the local model; replies now come from a server."
        if self._client.model_info is None:
            return "No model is loaded yet. Wait until it is, then rewrite the selection."
        return ""

    def start(self, message_id: str, char_start: int, char_end: int, instruction: str = "") -> str:
        """Rewrites characters [char_start, char_end) of a reply's text (widened to whole tokens
        by the engine). Returns "" when it started, else why not (and nothing changed)."""
        reason = self.why_not(message_id)
        if reason:
            return reason
        controller = self._controller
        message = controller.transcript.get(message_id)
        text = message.content
        char_start, char_end = max(0, char_start), min(len(text), char_end)
        if not text[char_start:char_end].strip():
            return "Select some text of the reply to rewrite."
        index = controller.transcript.index_of(message_id)
        history = [
            ChatMessage(role=m.role, content=m.content)
            for m in controller.transcript.items()[:index]
            if not (m.role == "assistant" and (m.status == "error" or not m.content)) and m.status != "streaming"
        ]
        if not history or history[-1].role != "user":
            return "This reply does not follow a question, so it cannot be rewritten."
        settings = controller.chat_settings  # the open chat's own (the reply is in it)
        request_id = self._client.rewrite_span(
            history,
            message.token_ids,
            char_start,
            char_end,
            instruction=instruction.strip(),
            system_prompt=settings.system_prompt,
            settings=settings.generation_settings(),
        )
        state = RewriteInProgress(request_id, text, (char_start, char_end), instruction=instruction.strip())
        self._active = _ActiveRewrite(request_id, message, state)
        controller._update(message, persist=False, rewrite=state)
        log.info("rewriting characters %d:%d of reply %s (request %s)", char_start, char_end, message_id, request_id)
        self.started.emit(message_id)
        controller.generating_changed.emit(True)
        return ""

    def stop(self) -> None:
        """Cancels the rewrite; the reply keeps its old text."""
        if self._active is not None:
            self._client.cancel(self._active.request_id)

    def _is_active(self, request_id: str) -> bool:
        return self._active is not None and self._active.request_id == request_id

    def _on_client_span_draft_arrived(self, draft: SpanDraft) -> None:
        # Every draft, so that a canvas's last one is kept when the next canvas's supersedes it
        # in the paint throttle.
        if self._is_active(draft.request_id):
            self._active.state = self._active.state.with_draft(draft)

    def _on_client_span_draft_received(self, draft: SpanDraft) -> None:
        if self._is_active(draft.request_id):
            self._controller._update(self._active.message, persist=False, rewrite=self._active.state)

    def _on_client_span_rewritten(self, event: SpanRewritten) -> None:
        if not self._is_active(event.request_id):
            return
        active = self._end()
        message = active.message
        if event.finish_reason != "rewritten":
            self._controller._update(message, persist=False, rewrite=None)
            self._finished(message.id, "cancelled")
            return
        if tuple(event.token_ids) == tuple(message.token_ids):
            # The model chose the same words again: no new version to undo.
            self._controller._update(message, persist=False, rewrite=None)
            self._finished(message.id, "unchanged")
            return
        versions = message.versions or ReplyVersions.first(message.content, message.token_ids)
        version = ReplyVersion(
            event.text, tuple(event.token_ids), (event.rewritten[0], event.rewritten[1]), active.state.instruction
        )
        versions = versions.with_rewrite(version)
        self._controller._update(
            message, rewrite=None, content=version.content, token_ids=version.token_ids, versions=versions
        )
        self._finished(message.id, "rewritten")
        self.versions_changed.emit(message.id)

    def _on_client_generation_failed(self, error: Error) -> None:
        if self._is_active(error.request_id):
            self._fail(f"{error.message} The reply is unchanged.")

    def _on_client_generation_interrupted(self, request_id: str) -> None:
        if self._is_active(request_id):
            self._fail("The engine stopped during the rewrite. The reply is unchanged.")

    def _fail(self, text: str) -> None:
        message = self._end().message
        self._controller._update(message, persist=False, rewrite=None)
        self.failed.emit(message.id, text)
        self._finished(message.id, "failed")

    def _end(self) -> _ActiveRewrite:
        active = self._active
        assert active is not None
        self._active = None
        return active

    def _finished(self, message_id: str, outcome: str) -> None:
        self.finished.emit(message_id, outcome)
        self._controller.generating_changed.emit(self._controller.is_generating)

    # ------------------------------------------------------------------ versions

    def can_undo(self, message_id: str) -> bool:
        message = self._controller.transcript.get(message_id)
        return message is not None and message.versions is not None and message.versions.can_undo

    def can_redo(self, message_id: str) -> bool:
        message = self._controller.transcript.get(message_id)
        return message is not None and message.versions is not None and message.versions.can_redo

    def undo(self, message_id: str) -> bool:
        """Shows the reply's version before the last rewrite (kept: redo brings it back)."""
        return self._move(message_id, -1)

    def redo(self, message_id: str) -> bool:
        return self._move(message_id, +1)

    def undo_target(self, preferred: str = "") -> str:
        """The reply Ctrl+Z undoes: the preferred (selected) one if it can, else the last one that can."""
        if preferred and self.can_undo(preferred):
            return preferred
        for message in reversed(self._controller.transcript.items()):
            if message.versions is not None and message.versions.can_undo:
                return message.id
        return ""

    def _move(self, message_id: str, delta: int) -> bool:
        if self.busy or (delta < 0 and not self.can_undo(message_id)) or (delta > 0 and not self.can_redo(message_id)):
            return False
        message = self._controller.transcript.get(message_id)
        versions = message.versions.moved(delta)
        shown = versions.shown
        self._controller._update(message, content=shown.content, token_ids=shown.token_ids, versions=versions)
        self.versions_changed.emit(message_id)
        return True
