"""Plain-Python chat models (no Qt): messages, conversations, and observable lists of them.

`Transcript` (one conversation's messages) and `ConversationList` (the sidebar) tell observers
about every insert, change and removal; the Qt adapters in `app.chat.qt_models` only translate those
callbacks into model signals. Change messages through the list's methods, never in place.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Literal, TypeVar, get_args

Role = Literal["user", "assistant", "system"]
MessageStatus = Literal["sending", "streaming", "finished", "stopped", "interrupted", "error"]
MESSAGE_STATUSES: tuple[str, ...] = get_args(MessageStatus)
# A message in one of these states will not change any more.
FINAL_STATUSES = frozenset({"finished", "stopped", "interrupted", "error"})

DEFAULT_TITLE = "New chat"


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class DraftState:
    """The open canvas of a streaming reply, as of the latest applied draft."""

    canvas_index: int
    step_index: int
    max_steps: int
    pieces: tuple[str, ...]
    settled: tuple[bool, ...]
    entropy: tuple[int, ...]
    text: str = ""

    @classmethod
    def from_draft(cls, draft: Any) -> DraftState:
        """From an `engine.protocol.Draft` event."""
        return cls(
            canvas_index=draft.canvas_index,
            step_index=draft.step_index,
            max_steps=draft.max_steps,
            pieces=tuple(draft.pieces),
            settled=tuple(draft.settled),
            entropy=tuple(draft.entropy),
            text=draft.text,
        )


@dataclass
class Message:
    """One chat message. `content` of a streaming reply holds its committed canvases only."""

    role: Role
    content: str
    conversation_id: str = ""
    status: MessageStatus = "finished"
    stats: dict[str, Any] | None = None
    error: str = ""
    replay: bytes | None = None
    answered_by: str = ""  # which backend and model wrote a reply (app.chat.backend.answered_by)
    id: str = field(default_factory=new_id)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    attachments: tuple[Any, ...] = ()  # app.chat.attachments.Attachment: images of a user message
    # A finished reply's token ids as the engine gave them (what a rewrite of a span starts from),
    # and its versions once a span was rewritten (app.chat.versions.ReplyVersions).
    token_ids: tuple[int, ...] = ()
    versions: Any = None
    # Not persisted: the open canvas while the reply streams (None otherwise).
    draft: DraftState | None = None
    # Not persisted: a rewrite of a span in progress (app.chat.versions.RewriteInProgress).
    rewrite: Any = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass
class Conversation:
    title: str = DEFAULT_TITLE
    id: str = field(default_factory=new_id)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)


T = TypeVar("T")


class Callbacks:
    """A list of callables invoked in order (a plain-Python stand-in for a signal)."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., None]] = []

    def connect(self, callback: Callable[..., None]) -> None:
        self._callbacks.append(callback)

    def disconnect(self, callback: Callable[..., None]) -> None:
        self._callbacks.remove(callback)

    def __call__(self, *args: Any) -> None:
        for callback in list(self._callbacks):
            callback(*args)


class ObservableList(Generic[T]):
    """Items with an `id`, kept in order; observers hear about every change.

    Callbacks: `about_to_insert(index)`, `inserted(index, item)`, `changed(index, item, names)`,
    `about_to_remove(index, item)`, `removed(index, item)`, `about_to_move(old, new)`,
    `moved(old, new, item)`, `about_to_reset()`, `reset()`.
    The `about_to_*` pairs exist because Qt item models must announce a change before it happens.
    """

    def __init__(self, items: list[T] | None = None) -> None:
        self._items: list[T] = list(items or [])
        self.about_to_insert = Callbacks()
        self.inserted = Callbacks()
        self.changed = Callbacks()
        self.about_to_remove = Callbacks()
        self.removed = Callbacks()
        self.about_to_move = Callbacks()
        self.moved = Callbacks()
        self.about_to_reset = Callbacks()
        self.reset = Callbacks()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def __getitem__(self, index: int) -> T:
        return self._items[index]

    def items(self) -> list[T]:
        return list(self._items)

    def index_of(self, item_id: str) -> int:
        for index, item in enumerate(self._items):
            if item.id == item_id:  # type: ignore[attr-defined]
                return index
        raise KeyError(item_id)

    def get(self, item_id: str) -> T | None:
        try:
            return self._items[self.index_of(item_id)]
        except KeyError:
            return None

    def insert(self, index: int, item: T) -> None:
        index = max(0, min(index, len(self._items)))
        self.about_to_insert(index)
        self._items.insert(index, item)
        self.inserted(index, item)

    def append(self, item: T) -> None:
        self.insert(len(self._items), item)

    def update(self, item_id: str, **values: Any) -> T:
        """Sets fields of one item and tells observers which ones changed."""
        index = self.index_of(item_id)
        item = self._items[index]
        names = []
        for name, value in values.items():
            if not hasattr(item, name):
                raise AttributeError(f"{type(item).__name__} has no field {name!r}")
            if getattr(item, name) != value:
                setattr(item, name, value)
                names.append(name)
        if names:
            self.changed(index, item, tuple(names))
        return item

    def remove(self, item_id: str) -> T:
        index = self.index_of(item_id)
        item = self._items[index]
        self.about_to_remove(index, item)
        del self._items[index]
        self.removed(index, item)
        return item

    def move(self, item_id: str, new_index: int) -> None:
        """Moves an item so that it ends up at `new_index`."""
        old_index = self.index_of(item_id)
        new_index = max(0, min(new_index, len(self._items) - 1))
        if old_index == new_index:
            return
        self.about_to_move(old_index, new_index)
        item = self._items.pop(old_index)
        self._items.insert(new_index, item)
        self.moved(old_index, new_index, item)

    def replace_all(self, items: list[T]) -> None:
        self.about_to_reset()
        self._items = list(items)
        self.reset()


class Transcript(ObservableList[Message]):
    """The messages of the open conversation, oldest first."""

    def __init__(self, conversation_id: str = "", messages: list[Message] | None = None) -> None:
        super().__init__(messages)
        self.conversation_id = conversation_id

    def load(self, conversation_id: str, messages: list[Message]) -> None:
        self.conversation_id = conversation_id
        self.replace_all(messages)

    def last(self, role: Role | None = None) -> Message | None:
        for message in reversed(self._items):
            if role is None or message.role == role:
                return message
        return None

    def remove_from(self, index: int) -> list[Message]:
        """Removes the message at `index` and everything after it; returns them."""
        removed = []
        while len(self._items) > index:
            removed.append(self.remove(self._items[-1].id))
        removed.reverse()
        return removed


class ConversationList(ObservableList[Conversation]):
    """The sidebar's conversations, most recently updated first."""

    def touch(self, conversation_id: str, updated: float) -> None:
        """Records that a conversation changed and moves it to the top."""
        if self.get(conversation_id) is None:
            return
        self.update(conversation_id, updated=updated)
        self.move(conversation_id, 0)

    def insert_sorted(self, conversation: Conversation) -> None:
        """Inserts at the place its `updated` time gives it (newest first)."""
        index = 0
        while index < len(self._items) and self._items[index].updated > conversation.updated:
            index += 1
        self.insert(index, conversation)


def copy_message(message: Message, **changes: Any) -> Message:
    return dataclasses.replace(message, **changes)
