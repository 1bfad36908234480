"""What the pointer and the context menu do in the transcript: hover, the action links under a
message, links in its text, the selectable-text editor, copying. A mixin of `TranscriptView`."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QAction, QContextMenuEvent, QDesktopServices, QGuiApplication, QTextCursor
from PySide6.QtWidgets import QMenu, QTextBrowser

from app.transcript.delegate import BUBBLE_PAD_Y, message_of
from app.transcript.image_viewer import ImageViewer
from app.transcript.thought_channel import THOUGHT_SCHEME

# Same as app.transcript.markdown_render.COPY_CODE_SCHEME; that module (markdown-it, Pygments) is imported on
# the first assistant message, not at startup.
COPY_CODE_SCHEME = "copy-code"


class TranscriptPointer:
    """Selection, hover, links and menus of `TranscriptView` (which provides the list-view side)."""

    def is_selected_message(self, message_id: str) -> bool:
        return bool(message_id) and message_id == self._selected_id

    def has_editor_for(self, message_id: str) -> bool:
        return (
            self._editor_index is not None
            and self._editor_index.isValid()
            and message_id == self._selected_id
            and self.isPersistentEditorOpen(QModelIndex(self._editor_index))
        )

    def select_message(self, message_id: str) -> None:
        """Opens the selectable text of a finished message (closing the previous one)."""
        if self._editor_index is not None and self._editor_index.isValid():
            self.closePersistentEditor(QModelIndex(self._editor_index))
        self._editor_index = None
        previous = self._selected_id
        self._selected_id = message_id
        index = self.index_of_message(message_id) if message_id else QModelIndex()
        if index.isValid():
            message = message_of(index)
            if message.content and not self.is_streaming(message_id) and message.rewrite is None:
                self._editor_index = QPersistentModelIndex(index)
                self.openPersistentEditor(index)
            self.viewport().update(self.visualRect(index))
        if previous and previous != message_id:
            old = self.index_of_message(previous)
            if old.isValid():
                self.viewport().update(self.visualRect(old))

    def selected_message_id(self) -> str:
        return self._selected_id

    def _keep_editor_fresh(self, top_left: QModelIndex, bottom_right: QModelIndex) -> None:
        if self._editor_index is None or not self._editor_index.isValid():
            return
        if top_left.row() <= self._editor_index.row() <= bottom_right.row():
            message = message_of(QModelIndex(self._editor_index))
            if message is None or self.is_streaming(message.id) or message.rewrite is not None:
                self.select_message("")
            else:
                editor = self.indexWidget(QModelIndex(self._editor_index))
                if editor is not None:
                    self._delegate.setEditorData(editor, QModelIndex(self._editor_index))

    def toggle_thought(self, message_id: str) -> None:
        """Expands or collapses a reply's thought channel."""
        self.expanded_thoughts ^= {message_id}
        self.scheduleDelayedItemsLayout()  # the row's height changes
        self.viewport().update()

    def open_anchor(self, index: QPersistentModelIndex, href: str) -> None:
        if href.startswith(THOUGHT_SCHEME + ":"):
            message = message_of(QModelIndex(index))
            if message is not None:
                self.toggle_thought(message.id)
            return
        if href.startswith(COPY_CODE_SCHEME + ":"):
            message = message_of(QModelIndex(index))
            if message is None:
                return
            _, rendered = self._delegate.document_for(message, self._delegate.content_width(message.role, self.viewport().width()))
            number = int(href.split(":", 1)[1])
            if rendered is not None and 0 <= number < len(rendered.code_blocks):
                self._copy(rendered.code_blocks[number])
            return
        url = QUrl(href)
        if url.scheme() in ("http", "https", "mailto"):
            QDesktopServices.openUrl(url)

    def _copy(self, text: str) -> None:
        QGuiApplication.clipboard().setText(text)
        self.copied.emit(text)

    def copy_message(self, message_id: str) -> None:
        index = self.index_of_message(message_id)
        message = message_of(index) if index.isValid() else None
        if message is not None:
            self._copy(message.content)

    def _anchor_at(self, index: QModelIndex, pos: QPoint) -> str:
        message = message_of(index)
        geometry = self._delegate.row_geometry(index)
        if message is None or geometry is None or not message.content:
            return ""
        doc, _ = self._delegate.document_for(message, self._delegate.content_width(message.role, self.viewport().width()))
        local = QPointF(pos.x() - geometry.content_left, pos.y() - geometry.content_top)
        return doc.documentLayout().anchorAt(local)

    def _image_at(self, index: QModelIndex, pos: QPoint) -> int:
        message = message_of(index)
        geometry = self._delegate.row_geometry(index)
        if message is None or geometry is None or not getattr(message, "attachments", ()):
            return -1
        local = QPoint(pos.x() - geometry.content_left, pos.y() - geometry.bubble.top() - BUBBLE_PAD_Y)
        return self._delegate.images.image_at(message, geometry.content_width, local)

    def open_image(self, message_id: str, number: int = 0) -> ImageViewer | None:
        """Shows a message's image at full size in the viewer (Esc closes it)."""
        index = self.index_of_message(message_id)
        message = message_of(index) if index.isValid() else None
        if message is None or not getattr(message, "attachments", ()):
            return None
        if self.image_viewer is not None:
            self.image_viewer.close()
        viewer = ImageViewer(message.attachments, number, self.window())
        viewer.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        viewer.finished.connect(lambda *_: setattr(self, "image_viewer", None) if self.image_viewer is viewer else None)
        self.image_viewer = viewer
        viewer.show()
        self.image_opened.emit(message_id, viewer.number)
        return viewer

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.open_image(self._selected_id) is not None:
            return
        super().keyPressEvent(event)

    def shows_actions(self, message_id: str) -> bool:
        """Copy/Edit/Replay links show on the hovered and the selected message, and on the last one."""
        if message_id in (self._hovered_id, self._selected_id):
            return True
        model = self.model()
        if model is None or not model.rowCount():
            return False
        last = message_of(model.index(model.rowCount() - 1, 0))
        return last is not None and last.id == message_id

    def _set_hovered(self, index: QModelIndex) -> None:
        message = message_of(index) if index.isValid() else None
        message_id = message.id if message is not None else ""
        if message_id == self._hovered_id:
            return
        previous = QModelIndex(self._hovered_index) if self._hovered_index is not None else QModelIndex()
        self._hovered_id = message_id
        self._hovered_index = QPersistentModelIndex(index) if message_id else None
        for changed in (previous, index):
            if changed.isValid():
                self.viewport().update(self.visualRect(changed))

    def leaveEvent(self, event) -> None:
        self._set_hovered(QModelIndex())
        super().leaveEvent(event)

    def _link_at(self, index: QModelIndex, pos: QPoint) -> str:
        geometry = self._delegate.row_geometry(index)
        message = message_of(index)
        if geometry is None or message is None or not self.shows_actions(message.id):
            return ""
        for name, rect in geometry.links.items():
            if rect.adjusted(-3, -2, 3, 2).contains(pos):
                return name
        return ""

    def trigger_link(self, message_id: str, name: str) -> None:
        if name == "Copy":
            self.copy_message(message_id)
        elif name == "Edit":
            self.sig_edit_requested.emit(message_id)
        elif name == "Replay":
            self.sig_replay_requested.emit(message_id)
        elif name == "Regenerate":
            self.sig_regenerate_requested.emit(message_id)
        elif name == "Retry":
            self.sig_retry_requested.emit(message_id)
        elif name == "Stop replay":
            self.stop_replay(message_id)
        elif name == "Undo rewrite":
            self.sig_undo_rewrite_requested.emit(message_id)
        elif name == "Redo rewrite":
            self.sig_redo_rewrite_requested.emit(message_id)

    def mouseMoveEvent(self, event) -> None:
        index = self.indexAt(event.position().toPoint())
        pointing = False
        self._set_hovered(index)
        if index.isValid():
            pos = event.position().toPoint()
            pointing = bool(self._link_at(index, pos) or self._anchor_at(index, pos)) or self._image_at(index, pos) >= 0
        self.viewport().setCursor(Qt.CursorShape.PointingHandCursor if pointing else Qt.CursorShape.ArrowCursor)
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            pos = event.position().toPoint()
            index = self.indexAt(pos)
            if index.isValid():
                message = message_of(index)
                link = self._link_at(index, pos)
                if link:
                    self.trigger_link(message.id, link)
                    return
                anchor = self._anchor_at(index, pos)
                if anchor:
                    self.open_anchor(QPersistentModelIndex(index), anchor)
                    return
                number = self._image_at(index, pos)
                if number >= 0:
                    self.select_message(message.id)
                    self.open_image(message.id, number)
                    return
                geometry = self._delegate.row_geometry(index)
                if geometry is not None and geometry.bubble.contains(pos):
                    self.select_message(message.id)
                    return
            self.select_message("")
        super().mouseReleaseEvent(event)

    def contextMenuEvent(self, event) -> None:
        index = self.indexAt(event.pos())
        keyboard = event.reason() == QContextMenuEvent.Reason.Keyboard
        if (keyboard or not index.isValid()) and self._selected_id:
            index = self.index_of_message(self._selected_id)
        message = message_of(index) if index.isValid() else None
        if message is None:
            return
        menu = self.context_menu_for(message)
        menu.exec(event.globalPos())
        menu.deleteLater()

    def context_menu_for(self, message: Any) -> QMenu:
        menu = QMenu(self)
        copy_action = QAction("Copy message", menu)
        copy_action.triggered.connect(lambda: self.copy_message(message.id))
        menu.addAction(copy_action)
        browser = self.indexWidget(self.index_of_message(message.id))
        if isinstance(browser, QTextBrowser) and browser.textCursor().hasSelection():
            selection = browser.textCursor().selection().toPlainText()
            copy_selection = QAction("Copy selection", menu)
            copy_selection.triggered.connect(lambda: self._copy(selection))
            menu.insertAction(copy_action, copy_selection)
        if getattr(message, "attachments", ()):
            view = QAction("View images\u2026" if len(message.attachments) > 1 else "View image\u2026", menu)
            view.triggered.connect(lambda: self.open_image(message.id))
            menu.addAction(view)
        final = message.status not in ("streaming", "sending")
        if message.role == "user":
            edit = QAction("Edit and resend", menu)
            edit.setEnabled(final)
            edit.triggered.connect(lambda: self.sig_edit_requested.emit(message.id))
            menu.addAction(edit)
        else:
            regenerate = QAction("Regenerate", menu)
            regenerate.setEnabled(final)
            regenerate.triggered.connect(lambda: self.sig_regenerate_requested.emit(message.id))
            menu.addAction(regenerate)
            replay = QAction("Replay the denoising", menu)
            replay.setEnabled(final and bool(message.replay))
            replay.triggered.connect(lambda: self.sig_replay_requested.emit(message.id))
            menu.addAction(replay)
            self._add_rewrite_actions(menu, message)
        return menu

    # -- rewriting a selected span in place

    def _add_rewrite_actions(self, menu: QMenu, message: Any) -> None:
        span = self.selected_source_span(message.id)
        menu.addSeparator()
        for text, with_instruction, name in (
            ("Rewrite selection", False, "rewriteSelectionAction"),
            ("Rewrite selection with instruction\u2026", True, "rewriteWithInstructionAction"),
        ):
            action = QAction(text, menu)
            action.setObjectName(name)
            action.setEnabled(span is not None and message.rewrite is None)
            if span is not None:
                action.triggered.connect(
                    lambda _=False, w=with_instruction: self.sig_rewrite_requested.emit(message.id, span[0], span[1], w)
                )
            menu.addAction(action)
        versions = message.versions
        if versions is not None and (versions.can_undo or versions.can_redo):
            undo = QAction("Undo rewrite", menu)
            undo.setEnabled(versions.can_undo)
            undo.triggered.connect(lambda: self.sig_undo_rewrite_requested.emit(message.id))
            menu.addAction(undo)
            redo = QAction("Redo rewrite", menu)
            redo.setEnabled(versions.can_redo)
            redo.triggered.connect(lambda: self.sig_redo_rewrite_requested.emit(message.id))
            menu.addAction(redo)

    def selected_source_span(self, message_id: str) -> tuple[int, int] | None:
        """The text selected in a reply, as [start, end) characters of its Markdown source."""
        from app.transcript.span_animation import selection_in_document, source_range

        index = self.index_of_message(message_id)
        message = message_of(index) if index.isValid() else None
        browser = self.indexWidget(index) if index.isValid() else None
        if message is None or message.role != "assistant" or not isinstance(browser, QTextBrowser):
            return None
        cursor = browser.textCursor()
        if not cursor.hasSelection():
            return None
        doc = browser.document()
        before, selected = selection_in_document(doc, cursor.selectionStart(), cursor.selectionEnd())
        after = selection_in_document(doc, cursor.selectionEnd(), doc.characterCount() - 1)[1]
        return source_range(message.content, before, selected, after)

    def select_text(self, message_id: str, start: int, end: int) -> bool:
        """Opens a reply's selectable text and selects characters [start, end) of what it shows."""
        self.select_message(message_id)
        browser = self.indexWidget(self.index_of_message(message_id))
        if not isinstance(browser, QTextBrowser):
            return False
        cursor = browser.textCursor()
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        browser.setTextCursor(cursor)
        return True

