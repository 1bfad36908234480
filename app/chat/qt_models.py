"""Thin Qt item-model adapters over the plain-Python lists in `app.chat.messages`.

They hold no data of their own: every row is the list's item, every change comes from the
list's callbacks (napari's `_base_item_model` pattern). Call `detach()` before dropping one.
"""

from __future__ import annotations

import enum
from typing import Any, Generic, TypeVar

from PySide6.QtCore import QAbstractListModel, QByteArray, QModelIndex, QObject, QPersistentModelIndex, Qt

import app.qt_compat  # noqa: F401  (PySide6 6.12 / CPython 3.11 refcount fix, before any emit)

from app.chat.message_text import accessible_description, accessible_text, timestamp_tooltip
from app.chat.messages import Conversation, ConversationList, Message, ObservableList, Transcript

T = TypeVar("T")
_ROOT = QModelIndex()



class MessageRole(enum.IntEnum):
    """Custom data roles of `TranscriptListModel` (DisplayRole is the content)."""

    MESSAGE = Qt.ItemDataRole.UserRole + 1  # the app.chat.messages.Message itself
    ID = Qt.ItemDataRole.UserRole + 2
    ROLE = Qt.ItemDataRole.UserRole + 3  # "user" | "assistant" | "system"
    CONTENT = Qt.ItemDataRole.UserRole + 4
    STATUS = Qt.ItemDataRole.UserRole + 5
    STATS = Qt.ItemDataRole.UserRole + 6
    DRAFT = Qt.ItemDataRole.UserRole + 7  # app.chat.messages.DraftState or None
    ERROR = Qt.ItemDataRole.UserRole + 8
    HAS_REPLAY = Qt.ItemDataRole.UserRole + 9


class ConversationRole(enum.IntEnum):
    CONVERSATION = Qt.ItemDataRole.UserRole + 1
    ID = Qt.ItemDataRole.UserRole + 2
    TITLE = Qt.ItemDataRole.UserRole + 3
    UPDATED = Qt.ItemDataRole.UserRole + 4


class _ObservableListModel(QAbstractListModel, Generic[T]):
    def __init__(self, source: ObservableList[T], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._source = source
        self._hooks = [
            (source.about_to_insert, self._on_source_about_to_insert),
            (source.inserted, self._on_source_inserted),
            (source.changed, self._on_source_changed),
            (source.about_to_remove, self._on_source_about_to_remove),
            (source.removed, self._on_source_removed),
            (source.about_to_move, self._on_source_about_to_move),
            (source.moved, self._on_source_moved),
            (source.about_to_reset, self._on_source_about_to_reset),
            (source.reset, self._on_source_reset),
        ]
        for callbacks, hook in self._hooks:
            callbacks.connect(hook)

    def detach(self) -> None:
        """Stops listening to the source list."""
        for callbacks, hook in self._hooks:
            callbacks.disconnect(hook)
        self._hooks = []

    @property
    def source(self) -> ObservableList[T]:
        return self._source

    def item(self, row: int) -> T:
        return self._source[row]

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._source)

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemNeverHasChildren

    def _on_source_about_to_insert(self, index: int) -> None:
        self.beginInsertRows(_ROOT, index, index)

    def _on_source_inserted(self, index: int, item: T) -> None:
        self.endInsertRows()

    def _on_source_about_to_remove(self, index: int, item: T) -> None:
        self.beginRemoveRows(_ROOT, index, index)

    def _on_source_removed(self, index: int, item: T) -> None:
        self.endRemoveRows()

    def _on_source_about_to_move(self, old: int, new: int) -> None:
        # Qt counts the destination in rows before the move: moving down lands after `new`.
        self.beginMoveRows(_ROOT, old, old, _ROOT, new + 1 if new > old else new)

    def _on_source_moved(self, old: int, new: int, item: T) -> None:
        self.endMoveRows()

    def _on_source_about_to_reset(self) -> None:
        self.beginResetModel()

    def _on_source_reset(self) -> None:
        self.endResetModel()

    def _on_source_changed(self, index: int, item: T, names: tuple[str, ...]) -> None:
        model_index = self.index(index, 0)
        self.dataChanged.emit(model_index, model_index, self._roles_for(names))

    def _roles_for(self, names: tuple[str, ...]) -> list[int]:
        return []  # all roles


_ACCESSIBLE_ROLES = [Qt.ItemDataRole.AccessibleTextRole, Qt.ItemDataRole.AccessibleDescriptionRole]
_MESSAGE_FIELD_ROLES: dict[str, list[int]] = {
    "content": [Qt.ItemDataRole.DisplayRole, MessageRole.CONTENT, *_ACCESSIBLE_ROLES],
    "status": [MessageRole.STATUS, *_ACCESSIBLE_ROLES],
    "stats": [MessageRole.STATS],
    "draft": [MessageRole.DRAFT],
    "error": [MessageRole.ERROR, Qt.ItemDataRole.AccessibleDescriptionRole],
    "replay": [MessageRole.HAS_REPLAY],
    "updated": [],  # the time of the last stored change: no role shows it
}


class TranscriptListModel(_ObservableListModel[Message]):
    """One row per message of a `Transcript`; see `MessageRole` for the data roles."""

    def __init__(self, transcript: Transcript, parent: QObject | None = None) -> None:
        super().__init__(transcript, parent)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._source) or index.column() != 0:
            return None
        message = self._source[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, MessageRole.CONTENT):
            return message.content
        if role == MessageRole.MESSAGE:
            return message
        if role == MessageRole.ID:
            return message.id
        if role == MessageRole.ROLE:
            return message.role
        if role == MessageRole.STATUS:
            return message.status
        if role == MessageRole.STATS:
            return message.stats
        if role == MessageRole.DRAFT:
            return message.draft
        if role == MessageRole.ERROR:
            return message.error
        if role == MessageRole.HAS_REPLAY:
            return message.replay is not None
        if role == Qt.ItemDataRole.ToolTipRole:
            return timestamp_tooltip(message)
        if role == Qt.ItemDataRole.AccessibleTextRole:
            return accessible_text(message)
        if role == Qt.ItemDataRole.AccessibleDescriptionRole:
            return accessible_description(message)
        return None

    def roleNames(self) -> dict[int, QByteArray]:
        names = super().roleNames()
        for role in MessageRole:
            names[role.value] = QByteArray(role.name.lower().encode())
        return names

    def _roles_for(self, names: tuple[str, ...]) -> list[int]:
        roles: list[int] = []
        for name in names:
            if name not in _MESSAGE_FIELD_ROLES:
                return []
            roles.extend(int(role) for role in _MESSAGE_FIELD_ROLES[name])
        return roles


class ConversationListModel(_ObservableListModel[Conversation]):
    """The sidebar: one row per conversation of a `ConversationList`, newest first."""

    def __init__(self, conversations: ConversationList, parent: QObject | None = None) -> None:
        super().__init__(conversations, parent)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._source) or index.column() != 0:
            return None
        conversation = self._source[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole, ConversationRole.TITLE):
            return conversation.title
        if role == ConversationRole.CONVERSATION:
            return conversation
        if role == ConversationRole.ID:
            return conversation.id
        if role == ConversationRole.UPDATED:
            return conversation.updated
        return None

    def roleNames(self) -> dict[int, QByteArray]:
        names = super().roleNames()
        for role in ConversationRole:
            names[role.value] = QByteArray(role.name.lower().encode())
        return names

    def row_of(self, conversation_id: str) -> int:
        try:
            return self._source.index_of(conversation_id)
        except KeyError:
            return -1
