"""The sidebar: conversations (new, rename in place, delete with undo) and a search field.

Search matches titles and message text through a function the window passes in (the store's
`search`); the list then shows only the matching conversations, each with its matching snippet.
"""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from typing import Any, Callable

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMenu,
    QPushButton,
    QStyledItemDelegate,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.chat.qt_models import ConversationRole

SEARCH_DELAY_MS = 150


class ConversationFilter(QSortFilterProxyModel):
    """Shows every conversation, or only those a search matched (with their snippets)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._matches: dict[str, str] | None = None

    def set_matches(self, matches: dict[str, str] | None) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt 6.10+; invalidateFilter() is deprecated there
            self.beginFilterChange()
            self._matches = matches
            self.endFilterChange()
        else:
            self._matches = matches
            self.invalidateFilter()

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex) -> bool:
        if self._matches is None:
            return True
        index = self.sourceModel().index(source_row, 0, source_parent)
        return index.data(ConversationRole.ID) in self._matches

    def flags(self, index: QModelIndex) -> Qt.ItemFlag:
        # Titles are edited in place; the edit goes to the sidebar's rename signal (_TitleDelegate).
        flags = super().flags(index)
        return flags | Qt.ItemFlag.ItemIsEditable if index.isValid() else flags

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.EditRole:
            return super().data(index, ConversationRole.TITLE)
        if role == Qt.ItemDataRole.ToolTipRole and self._matches:
            snippet = self._matches.get(super().data(index, ConversationRole.ID), "")
            if snippet:
                return snippet
        return super().data(index, role)


class _TitleDelegate(QStyledItemDelegate):
    """In-place rename: the edited title goes to the sidebar's rename signal, not into the model."""

    def __init__(self, sidebar: Sidebar):
        super().__init__(sidebar)
        self._sidebar = sidebar

    def setModelData(self, editor, model, index) -> None:
        title = editor.text().strip()
        conversation_id = index.data(ConversationRole.ID)
        if title and title != index.data(ConversationRole.TITLE):
            self._sidebar.sig_rename_requested.emit(conversation_id, title)


class Sidebar(QFrame):
    sig_new_requested = Signal()
    sig_conversation_selected = Signal(str)
    sig_rename_requested = Signal(str, str)
    sig_delete_requested = Signal(str)
    sig_undo_delete_requested = Signal(str)

    def __init__(self, model, search: Callable[[str], list[Any]], parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("sidebar")
        self._search = search
        self._deleted_id = ""

        self.new_button = QPushButton("+  New chat", self)
        self.new_button.setObjectName("newChatButton")
        self.new_button.setToolTip("New chat (Ctrl+N)")
        self.new_button.clicked.connect(self.sig_new_requested)

        self.search_field = QLineEdit(self)
        self.search_field.setObjectName("searchField")
        self.search_field.setPlaceholderText("Search chats  (Ctrl+F)")
        self.search_field.setClearButtonEnabled(True)
        self.search_field.textChanged.connect(self._on_search_field_text_changed)
        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.apply_search)

        self.proxy = ConversationFilter(self)
        self.proxy.setSourceModel(model)
        self.list_view = QListView(self)
        self.list_view.setObjectName("conversationList")
        self.list_view.setModel(self.proxy)
        self.list_view.setItemDelegate(_TitleDelegate(self))
        self.list_view.setEditTriggers(QAbstractItemView.EditTrigger.EditKeyPressed)
        self.list_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list_view.setUniformItemSizes(True)
        self.list_view.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list_view.setFrameShape(QFrame.Shape.NoFrame)
        self.list_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list_view.customContextMenuRequested.connect(self._on_list_view_context_menu_requested)
        self.list_view.selectionModel().currentChanged.connect(self._on_selection_current_changed)
        self.list_view.setSpacing(1)
        self.list_view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        self.empty_label = QLabel("No chats match.", self)
        self.empty_label.setObjectName("searchEmptyLabel")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.hide()

        self.undo_bar = QFrame(self)
        self.undo_bar.setObjectName("undoBar")
        self.undo_label = QLabel("Chat deleted.", self.undo_bar)
        self.undo_button = QToolButton(self.undo_bar)
        self.undo_button.setObjectName("undoDeleteButton")
        self.undo_button.setText("Undo")
        self.undo_button.clicked.connect(self._on_undo_button_clicked)
        undo_layout = QHBoxLayout(self.undo_bar)
        undo_layout.setContentsMargins(6, 2, 6, 2)
        undo_layout.addWidget(self.undo_label, 1)
        undo_layout.addWidget(self.undo_button)
        self.undo_bar.hide()
        self._undo_timer = QTimer(self)
        self._undo_timer.setSingleShot(True)
        self._undo_timer.setInterval(10_000)
        self._undo_timer.timeout.connect(self.hide_undo)

        self.rename_action = QAction("Rename", self)
        self.rename_action.setShortcut(QKeySequence(Qt.Key.Key_F2))
        self.rename_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.rename_action.triggered.connect(self.rename_current)
        self.delete_action = QAction("Delete", self)
        self.delete_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        self.delete_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.delete_action.triggered.connect(self.delete_current)
        self.list_view.addAction(self.rename_action)
        self.list_view.addAction(self.delete_action)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(6)
        layout.addWidget(self.new_button)
        layout.addWidget(self.search_field)
        layout.addWidget(self.list_view, 1)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.undo_bar)

    # -- selection

    def current_id(self) -> str:
        index = self.list_view.currentIndex()
        return index.data(ConversationRole.ID) if index.isValid() else ""

    def select_conversation(self, conversation_id: str) -> None:
        """Highlights a conversation without emitting sig_conversation_selected."""
        for row in range(self.proxy.rowCount()):
            index = self.proxy.index(row, 0)
            if index.data(ConversationRole.ID) == conversation_id:
                blocked = self.list_view.selectionModel().blockSignals(True)
                self.list_view.setCurrentIndex(index)
                self.list_view.selectionModel().blockSignals(blocked)
                self.list_view.viewport().update()
                return
        blocked = self.list_view.selectionModel().blockSignals(True)
        self.list_view.clearSelection()
        self.list_view.setCurrentIndex(QModelIndex())
        self.list_view.selectionModel().blockSignals(blocked)

    def visible_ids(self) -> list[str]:
        return [self.proxy.index(row, 0).data(ConversationRole.ID) for row in range(self.proxy.rowCount())]

    def _on_selection_current_changed(self, current: QModelIndex, previous: QModelIndex) -> None:
        if current.isValid():
            self.sig_conversation_selected.emit(current.data(ConversationRole.ID))

    # -- search

    def focus_search(self) -> None:
        self.search_field.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.search_field.selectAll()

    def _on_search_field_text_changed(self, text: str) -> None:
        self._search_timer.start()

    def apply_search(self) -> None:
        """Filters the list now (the field also does it after a short typing pause)."""
        self._search_timer.stop()
        text = self.search_field.text().strip()
        if not text:
            self.proxy.set_matches(None)
            self.empty_label.hide()
            return
        hits = self._search(text)
        self.proxy.set_matches({hit.conversation.id: hit.snippet for hit in hits})
        self.empty_label.setVisible(self.proxy.rowCount() == 0)

    def refresh_search(self) -> None:
        if self.search_field.text().strip():
            self.apply_search()

    # -- rename, delete, undo

    def rename_current(self) -> None:
        index = self.list_view.currentIndex()
        if index.isValid():
            self.list_view.edit(index)

    def delete_current(self) -> None:
        conversation_id = self.current_id()
        if conversation_id:
            self.sig_delete_requested.emit(conversation_id)

    def show_undo(self, conversation_id: str, title: str) -> None:
        self._deleted_id = conversation_id
        self.undo_label.setText(f"Deleted \u201c{title}\u201d.")
        self.undo_bar.show()
        self._undo_timer.start()

    def hide_undo(self) -> None:
        self._undo_timer.stop()
        self._deleted_id = ""
        self.undo_bar.hide()

    def _on_undo_button_clicked(self) -> None:
        conversation_id = self._deleted_id
        self.hide_undo()
        if conversation_id:
            self.sig_undo_delete_requested.emit(conversation_id)

    def _on_list_view_context_menu_requested(self, pos) -> None:
        index = self.list_view.indexAt(pos)
        if not index.isValid():
            return
        self.list_view.setCurrentIndex(index)
        menu = QMenu(self)
        menu.addAction(self.rename_action)
        menu.addAction(self.delete_action)
        menu.exec(self.list_view.viewport().mapToGlobal(pos))
        menu.deleteLater()
