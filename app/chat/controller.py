"""`ConversationController`: what the window's buttons call. It ties the sidebar list, the open
transcript, the `ChatStore` and the `EngineClient` together, and records each reply's replay.

Window usage::

    controller = ConversationController(store, client, settings)
    sidebar.setModel(ConversationListModel(controller.conversations))
    transcript_view.setModel(TranscriptListModel(controller.transcript))

Methods
    new_conversation() -> Conversation           creates and opens an empty conversation
    open_conversation(id)                        loads its messages into `transcript`
    rename_conversation(id, title)
    delete_conversation(id)                      soft delete; undo_delete_conversation(id) restores
    search(text) -> list[SearchHit]              titles and message text
    send(text) -> assistant message id | None    None while another reply is generating
    stop()                                       cancels the reply (kept, status "stopped")
    regenerate() -> message id | None            drops the last reply and asks again
    edit_and_resend(user_message_id, text)       drops that message and everything after, sends text
    replay_player(message_id, speed) -> ReplayPlayer | None
    rewrites (attribute)                         rewrite a span of a reply in place: app.chat.rewrite
    close()                                      disconnects from the client (call on window close)
    use_backend(backend) -> bool                 replies come from `backend` from now on (the local
                                                 EngineClient or an app.remote RemoteBackend); False
                                                 while a reply is generating
    backend (attribute)                          where the next reply comes from (a ChatBackend)
    settings (attribute)                         an app.settings.Settings: the defaults new chats start from
    chat_settings / set_chat_settings(cs)        the open chat's ChatSettings (saved with it), used by its next reply

Signals
    reply_started(message_id)                    an assistant message was inserted, status "streaming"
    reply_finished(message_id, status)           "finished" | "stopped" | "interrupted" | "error"
    generating_changed(bool)
    conversation_opened(conversation_id)         "" when none is open
    chat_settings_changed(ChatSettings)          the open chat's settings changed (edited, or new defaults)
    store_failed(text)                           a write failed (full disk, read-only); text is for the user.
                                                 Nothing is lost from memory, and refused writes are
                                                 retried before the next write.

Message statuses move: user "sending" → "finished"; assistant "streaming" → "finished" (done),
"stopped" (cancelled; committed text kept), "interrupted" (worker died; committed text kept) or
"error". While streaming, `Message.draft` holds the open canvas (latest wins, ≤ ~60/s) and
`Message.content` the committed canvases; a commit is written to the store at once, so a killed
app loses at most the open canvas.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from PySide6.QtCore import QObject, Signal

from app.chat.backend import ChatBackend, answered_by
from app.chat.chat_settings import ChatSettings, ChatSettingsBook
from app.chat.messages import (
    DEFAULT_TITLE,
    Conversation,
    ConversationList,
    DraftState,
    Message,
    Transcript,
)
from app.worker.engine_client import EngineClient
from app.chat.replay import ReplayPlayer, ReplayRecorder
from app.chat.rewrite import SpanRewrites
from app.settings import Settings
from app.chat.store import ChatStore, SearchHit, StoreWriteError
from app.chat.attachments import ImageSource, chat_message_of, sources_of, write_image_files
from engine.protocol import CanvasCommitted, ChatMessage, Done, Draft, Error

log = logging.getLogger("canvas_chat.controller")

TITLE_LENGTH = 48


@dataclass
class _ActiveReply:
    request_id: str
    message: Message
    recorder: ReplayRecorder


def title_from(text: str) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not line:
        return DEFAULT_TITLE
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


class ConversationController(QObject):
    reply_started = Signal(str)
    reply_finished = Signal(str, str)
    generating_changed = Signal(bool)
    conversation_opened = Signal(str)
    chat_settings_changed = Signal(object)
    backend_changed = Signal(object)  # the ChatBackend the next replies come from
    store_failed = Signal(str)

    def __init__(
        self,
        store: ChatStore,
        client: EngineClient,
        settings: Settings | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.store = store
        self.client = client
        self.backend: ChatBackend = client
        self._settings = settings or Settings()
        self.conversations = ConversationList(store.list_conversations())
        self.transcript = Transcript()
        self._active: _ActiveReply | None = None
        # Writes the store refused (full disk, read-only file), retried before the next write:
        # whole messages whose insert failed, and fields of stored messages whose update failed.
        self._unsaved: dict[str, Message] = {}
        self._unsaved_fields: dict[str, dict[str, Any]] = {}
        self._chat_settings = ChatSettingsBook(store.conversation_settings, lambda: self._settings)
        self._client_hooks: list[tuple[Any, Callable[..., None]]] = []
        self._listen_to(client)
        # Rewriting in place needs the local engine (a remote server has no such request).
        self.rewrites = SpanRewrites(self, client)

    def _listen_to(self, backend: ChatBackend) -> None:
        self._client_hooks = [
            (backend.draft_received, self._on_client_draft_received),
            (backend.draft_arrived, self._on_client_draft_arrived),
            (backend.canvas_committed, self._on_client_canvas_committed),
            (backend.generation_finished, self._on_client_generation_finished),
            (backend.generation_failed, self._on_client_generation_failed),
            (backend.generation_interrupted, self._on_client_generation_interrupted),
        ]
        for signal, slot in self._client_hooks:
            signal.connect(slot)

    def close(self) -> None:
        """Stops listening to the engine client (the store and client stay open: they are not ours)."""
        self._stop_listening()
        self.rewrites.close()

    def _stop_listening(self) -> None:
        for signal, slot in self._client_hooks:
            signal.disconnect(slot)
        self._client_hooks = []

    def use_backend(self, backend: ChatBackend) -> bool:
        """Sends the next replies to `backend` (refused while a reply is generating)."""
        if self.is_generating:
            return False
        if backend is not self.backend:
            self._stop_listening()
            self.backend = backend
            self._listen_to(backend)
            self.backend_changed.emit(backend)
        return True

    # ------------------------------------------------------------------ state

    @property
    def current_conversation_id(self) -> str:
        return self.transcript.conversation_id

    @property
    def is_generating(self) -> bool:
        """A reply is being written, or a span of one rewritten (one request at a time)."""
        return self._active is not None or self.rewrites.busy

    @property
    def active_message_id(self) -> str | None:
        return self._active.message.id if self._active else None

    @property
    def active_request_id(self) -> str | None:
        return self._active.request_id if self._active else None

    # ------------------------------------------------------------------ conversations

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings = settings
        self.chat_settings_changed.emit(self.chat_settings)  # a chat without its own follows them

    @property
    def chat_settings(self) -> ChatSettings:
        """The open conversation's settings (its next reply uses them)."""
        return self._chat_settings.get(self.current_conversation_id)

    def set_chat_settings(self, chat_settings: ChatSettings) -> None:
        """Changes the open chat's settings and saves them with it (a chat not created yet gets them
        when it is). Values outside engine.protocol.SETTING_RANGES are refused (ValueError)."""
        problems = chat_settings.problems()
        if problems:
            raise ValueError("; ".join(problems))
        conversation_id = self.current_conversation_id
        if chat_settings == self.chat_settings:
            return
        self._chat_settings.put(conversation_id, chat_settings)
        if conversation_id:
            self._write(self.store.save_conversation_settings, conversation_id, chat_settings.to_dict())
        self.chat_settings_changed.emit(chat_settings)

    @property
    def thinking(self) -> bool:
        """Whether replies in the open conversation think first (the model's thought channel)."""
        return self.chat_settings.thinking

    def set_thinking(self, enabled: bool) -> None:
        self.set_chat_settings(dataclasses.replace(self.chat_settings, thinking=enabled))

    def new_conversation(self) -> Conversation | None:
        conversation = self._write(self.store.create_conversation)
        if conversation is None:
            return None
        # A chat starts from the defaults in Settings, or from the edits made before it existed.
        pending = self._chat_settings.take_pending() if self.current_conversation_id == "" else self._chat_settings.defaults()
        self._chat_settings.put(conversation.id, pending)
        self._write(self.store.save_conversation_settings, conversation.id, pending.to_dict())
        self.conversations.insert(0, conversation)
        self.open_conversation(conversation.id)
        return conversation

    def open_conversation(self, conversation_id: str) -> None:
        if conversation_id == "":
            self.transcript.load("", [])
        else:
            messages = self.store.messages(conversation_id)
            messages += [m for m in self._unsaved.values() if m.conversation_id == conversation_id]
            if self._active and self._active.message.conversation_id == conversation_id:
                # The streaming reply lives in memory; show that object, not its stored copy.
                live = self._active.message
                messages = [live if m.id == live.id else m for m in messages]
                if all(m.id != live.id for m in messages):
                    messages.append(live)
            messages = [self.rewrites.live_message(m) for m in messages]
            self.transcript.load(conversation_id, messages)
        self.conversation_opened.emit(conversation_id)
        self.chat_settings_changed.emit(self.chat_settings)

    def rename_conversation(self, conversation_id: str, title: str) -> None:
        title = title.strip() or DEFAULT_TITLE
        if self.conversations.get(conversation_id) is not None:
            self.conversations.update(conversation_id, title=title)
        self._write(self.store.rename_conversation, conversation_id, title)

    def delete_conversation(self, conversation_id: str) -> None:
        """Hides a conversation; `undo_delete_conversation` brings it back (this session)."""
        if self._active and self._active.message.conversation_id == conversation_id:
            self.backend.cancel(self._active.request_id)
        if self._write(self.store.delete_conversation, conversation_id) is _FAILED:
            return
        if self.conversations.get(conversation_id) is not None:
            self.conversations.remove(conversation_id)
        if self.current_conversation_id == conversation_id:
            self.open_conversation("")

    def undo_delete_conversation(self, conversation_id: str) -> Conversation | None:
        conversation = self._write(self.store.restore_conversation, conversation_id)
        if conversation is None or conversation is _FAILED:
            return None
        if self.conversations.get(conversation_id) is None:
            self.conversations.insert_sorted(conversation)
        return conversation

    def search(self, text: str) -> list[SearchHit]:
        return self.store.search(text)

    # ------------------------------------------------------------------ replies

    def send(self, text: str, images: Sequence[ImageSource] = ()) -> str | None:
        """Sends a user message (with `images`, checked by the composer) in the open conversation
        (a new one if none is open). None when nothing was sent (and nothing stored)."""
        text = text.strip()
        if (not text and not images) or self.is_generating:
            return None
        if not self.current_conversation_id and self.new_conversation() is None:
            return None
        conversation_id = self.current_conversation_id
        user_message = Message(role="user", content=text, conversation_id=conversation_id, status="sending")
        if images:
            try:
                stored = write_image_files(self.store.images_root, conversation_id, user_message.id, list(images))
            except OSError as exc:
                self.store_failed.emit(f"Could not save the image(s) with the chat: {exc}. Nothing was sent.")
                return None
            user_message.attachments = tuple(stored)
        self._add(user_message)
        conversation = self.conversations.get(conversation_id)
        if conversation is not None and conversation.title == DEFAULT_TITLE:
            self.rename_conversation(conversation_id, title_from(text or images[0].name))
        message_id = self._start_reply(conversation_id)
        self._set_status(user_message, "finished")
        return message_id

    def stop(self) -> None:
        """Cancels the streaming reply; it ends as "stopped" with its committed text."""
        if self._active is not None:
            self.backend.cancel(self._active.request_id)
        self.rewrites.stop()

    def regenerate(self) -> str | None:
        """Drops the last assistant reply of the open conversation and asks again."""
        if self.is_generating or not self.current_conversation_id:
            return None
        last = self.transcript.last()
        if last is None:
            return None
        if last.role == "assistant":
            self._remove_from(last.id)
        if self.transcript.last(role="user") is None:
            return None
        return self._start_reply(self.current_conversation_id)

    def edit_and_resend(self, message_id: str, text: str, added_images: Sequence[ImageSource] = ()) -> str | None:
        """Replaces a user message (dropping everything after it) and sends the new text with the
        message's images and `added_images` (attached while editing) after them."""
        if self.is_generating:
            return None
        message = self.transcript.get(message_id)
        if message is None or message.role != "user" or not (text.strip() or message.attachments or added_images):
            return None
        # The auto-title follows a new first question, unless the user renamed the chat.
        first_question = next((m for m in self.transcript if m.role == "user"), None)
        conversation = self.conversations.get(message.conversation_id)
        if (
            first_question is not None
            and first_question.id == message_id
            and conversation is not None
            and conversation.title == title_from(message.content)
        ):
            self.rename_conversation(conversation.id, title_from(text))
        # The message's images go with the new text (read before their files are deleted with it).
        images = sources_of(message.attachments) + list(added_images)
        self._remove_from(message_id)
        return self.send(text, images)

    def replay_player(self, message_id: str, speed: float | None = None) -> ReplayPlayer | None:
        message = self.transcript.get(message_id)
        if message is None or not message.replay:
            return None
        return ReplayPlayer(message.replay, speed if speed is not None else self.settings.replay_speed)

    def history_for_reply(self) -> list[ChatMessage]:
        """What the model sees: every user message and every non-empty, non-error reply."""
        history = []
        for message in self.transcript:
            if message.role == "assistant" and (message.status == "error" or not message.content):
                continue
            if message.status == "streaming":
                continue
            history.append(chat_message_of(message))
        return history

    def _start_reply(self, conversation_id: str) -> str:
        history = self.history_for_reply()
        reply = Message(
            role="assistant",
            content="",
            conversation_id=conversation_id,
            status="streaming",
            answered_by=answered_by(self.backend),
        )
        self._add(reply)
        chat_settings = self._chat_settings.get(conversation_id)
        # The worker keys its KV cache by conversation_id and reuses it only while the rendered
        # prompt (system prompt included) starts with the cached tokens, so a changed system
        # prompt re-encodes the chat (tests/gui/test_chat_panel.py checks it through the worker).
        request_id = self.backend.generate(
            conversation_id,
            history,
            chat_settings.system_prompt,
            chat_settings.generation_settings(),
            thinking=chat_settings.thinking,
        )
        self._active = _ActiveReply(request_id, reply, ReplayRecorder())
        self.reply_started.emit(reply.id)
        self.generating_changed.emit(True)
        return reply.id

    def _finish_reply(self, status: str, content: str, **values: Any) -> None:
        active = self._active
        assert active is not None
        self._active = None
        message = active.message
        values.update(status=status, content=content)
        if active.recorder.frame_count:
            values["replay"] = active.recorder.finish()
        self._update(message, draft=None, **values)
        self.reply_finished.emit(message.id, status)
        self.generating_changed.emit(False)

    # ------------------------------------------------------------------ engine events

    def _is_active(self, request_id: str) -> bool:
        return self._active is not None and self._active.request_id == request_id

    def _on_client_draft_received(self, draft: Draft) -> None:
        if self._is_active(draft.request_id):
            self._update(self._active.message, persist=False, draft=DraftState.from_draft(draft))

    def _on_client_draft_arrived(self, draft: Draft) -> None:
        if self._is_active(draft.request_id):
            self._active.recorder.record_draft(draft)

    def _on_client_canvas_committed(self, commit: CanvasCommitted) -> None:
        if not self._is_active(commit.request_id):
            return
        self._active.recorder.record_commit(commit)
        self._update(self._active.message, draft=None, content=commit.reply_text)

    def _on_client_generation_finished(self, done: Done) -> None:
        if not self._is_active(done.request_id):
            return
        stats = dataclasses.asdict(done.stats)
        stats["finish_reason"] = done.finish_reason
        if not done.stats.decoder_forwards:
            # A remote server reports no forwards or steps (and tokens only with `usage`): no
            # made-up zeros under the reply; its first result is a whole canvas, not a draft.
            for name in ("decoder_forwards", "tokens_per_forward", "steps_per_canvas"):
                stats.pop(name)
            if not done.stats.new_tokens:
                stats.pop("tokens_per_s")
            stats["time_to_first_canvas_s"] = stats.pop("time_to_first_draft_s")
        if done.reasoning:
            stats["reasoning"] = done.reasoning  # shown collapsed above the answer
        status = "stopped" if done.finish_reason == "cancelled" else "finished"
        content = done.text or self._active.message.content
        if status == "stopped":
            content = self._with_visible_draft(content)
            if not done.token_ids:
                stats = None  # nothing was committed: no speed to report
        # The tokens a span rewrite starts from, when the text is exactly theirs (not the answer
        # part of a thinking reply, nor a stopped reply's settled draft).
        token_ids = tuple(done.token_ids) if content == done.text and not done.reasoning else ()
        self._finish_reply(status, content, stats=stats, token_ids=token_ids)

    def _with_visible_draft(self, content: str) -> str:
        """The committed text plus the settled start of the open canvas: a reply stopped (or cut
        off) mid-canvas keeps what the user could already read rather than throwing it away.

        Only the run of settled positions from the canvas's start is kept: a settled token after
        an unsettled one is not final (the next step may re-noise it), and joining across the gap
        would glue words together."""
        draft = self._active.message.draft if self._active is not None else None
        if draft is None:
            return content
        settled_start = []
        for piece, is_settled in zip(draft.pieces, draft.settled):
            if not is_settled:
                break
            settled_start.append(piece)
        settled = "".join(settled_start)
        return content + settled if settled.strip() else content

    def _on_client_generation_failed(self, error: Error) -> None:
        if self._is_active(error.request_id):
            self._finish_reply("error", self._active.message.content, error=error.message)

    def _on_client_generation_interrupted(self, request_id: str) -> None:
        if self._is_active(request_id):
            self._finish_reply(
                "interrupted",
                self._with_visible_draft(self._active.message.content),
                error=getattr(self.backend, "interrupted_text", "The engine stopped during this reply."),
            )

    # ------------------------------------------------------------------ store + transcript

    def _write(self, call: Callable[..., Any], *args: Any) -> Any:
        """Runs a store write, first retrying the writes it refused before. _FAILED if it fails."""
        try:
            for message_id, message in list(self._unsaved.items()):
                self.store.add_message(message)
                del self._unsaved[message_id]
            for message_id, fields in list(self._unsaved_fields.items()):
                self.store.update_message(message_id, **fields)
                del self._unsaved_fields[message_id]
            return call(*args)
        except StoreWriteError as exc:
            self.store_failed.emit(str(exc))
            return _FAILED

    def _add(self, message: Message) -> None:
        if message.conversation_id == self.current_conversation_id:
            self.transcript.append(message)
        if self._write(self.store.add_message, message) is _FAILED:
            self._unsaved.setdefault(message.id, message)
        self.conversations.touch(message.conversation_id, message.updated)

    def _set_status(self, message: Message, status: str) -> None:
        self._update(message, status=status)

    def _update(self, message: Message, persist: bool = True, **values: Any) -> None:
        """Changes a message in memory (and in the transcript if shown), then in the store.

        A change that is not persisted (a draft) leaves `updated` alone, so the transcript model
        reports it as a change of that one role (MessageRole.DRAFT) and the view only repaints.
        """
        if persist:
            values["updated"] = time.time()
        if self.transcript.get(message.id) is message:
            self.transcript.update(message.id, **values)
        else:
            for name, value in values.items():
                setattr(message, name, value)
        if not persist:
            return
        stored = {
            k: v for k, v in values.items() if k in ("content", "status", "stats", "error", "replay", "token_ids", "versions")
        }
        if stored and message.id not in self._unsaved:
            # (An unsaved message is written whole, with these values, by the next successful write.)
            if self._write(lambda: self.store.update_message(message.id, **stored)) is _FAILED:
                self._unsaved_fields.setdefault(message.id, {}).update(stored)
        self.conversations.touch(message.conversation_id, values["updated"])

    def _remove_from(self, message_id: str) -> None:
        index = self.transcript.index_of(message_id)
        for message in self.transcript.remove_from(index):
            self._unsaved.pop(message.id, None)
            self._unsaved_fields.pop(message.id, None)
        self._write(self.store.delete_messages_from, message_id)


class _Failed:
    def __repr__(self) -> str:
        return "<store write failed>"


_FAILED: Any = _Failed()
