"""The message composer: multi-line input (Enter sends, Shift+Enter adds a line), Send/Stop, Regenerate.

It also hosts edit-and-resend: the user message's text comes back into the input with a bar
that says what is being edited.
"""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from PySide6.QtCore import QMimeData, QSize, Qt, Signal
from PySide6.QtGui import QFontMetrics, QKeyEvent
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.window.attachment_strip import AttachButton, AttachmentStrip, mime_has_images

MAX_VISIBLE_LINES = 10


class ComposerEdit(QPlainTextEdit):
    """A plain-text input that grows with its text; Enter submits, Shift+Enter is a newline."""

    submitted = Signal()
    escape_pressed = Signal()
    images_offered = Signal(QMimeData)  # a paste or a drop that holds images (they are not text)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("composerEdit")
        self.setTabChangesFocus(True)
        self.setPlaceholderText("Message DiffusionGemma")
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.document().contentsChanged.connect(self._on_document_contents_changed)
        self._on_document_contents_changed()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            modifiers = event.modifiers()
            if modifiers & (Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.AltModifier):
                self.insertPlainText("\n")
                return
            if not modifiers & Qt.KeyboardModifier.ControlModifier or modifiers == Qt.KeyboardModifier.ControlModifier:
                self.submitted.emit()
                return
        if key == Qt.Key.Key_Escape:
            self.escape_pressed.emit()
            return
        super().keyPressEvent(event)

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return mime_has_images(source) or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        if mime_has_images(source):
            self.images_offered.emit(source)
            return
        super().insertFromMimeData(source)

    def _on_document_contents_changed(self) -> None:
        metrics = QFontMetrics(self.font())
        document_lines = int(self.document().size().height())
        lines = max(2, min(MAX_VISIBLE_LINES, document_lines))
        self.setVerticalScrollBarPolicy(
            Qt.ScrollBarPolicy.ScrollBarAsNeeded if document_lines > MAX_VISIBLE_LINES else Qt.ScrollBarPolicy.ScrollBarAlwaysOff
        )
        margins = self.contentsMargins()
        frame = int(self.document().documentMargin() * 2) + margins.top() + margins.bottom()
        self.setFixedHeight(lines * metrics.lineSpacing() + frame + 4)

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        return QSize(hint.width(), self.height())


class Composer(QFrame):
    """Input plus buttons. Buttons change with `set_generating`; the window decides what they do."""

    sig_send_requested = Signal(str)
    sig_edit_submitted = Signal(str, str)  # message id being edited, new text
    sig_stop_requested = Signal()
    sig_regenerate_requested = Signal()
    edit_cancelled = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("composer")
        self._generating = False
        self._can_send = True
        self._editing_id = ""

        self.edit = ComposerEdit(self)
        self.edit.submitted.connect(self._on_edit_submitted)
        self.edit.escape_pressed.connect(self._on_edit_escape_pressed)
        self.edit.textChanged.connect(self._update_buttons)
        self.attachments = AttachmentStrip(self)
        self.attachments.changed.connect(self._update_buttons)
        self.attach_button = AttachButton(self)
        self.attach_button.files_chosen.connect(self.attachments.add_files)
        self.edit.images_offered.connect(self._on_edit_images_offered)
        self.setAcceptDrops(True)

        self.edit_bar = QFrame(self)
        self.edit_bar.setObjectName("composerEditBar")
        self.edit_label = QLabel(
            "Editing your message \u2014 its images stay and images you attach are added; "
            "sending replaces it and everything after it",
            self.edit_bar,
        )
        self.edit_label.setWordWrap(True)
        self.edit_cancel_button = QToolButton(self.edit_bar)
        self.edit_cancel_button.setText("Cancel")
        self.edit_cancel_button.clicked.connect(self.cancel_edit)
        bar_layout = QHBoxLayout(self.edit_bar)
        bar_layout.setContentsMargins(4, 0, 4, 0)
        bar_layout.addWidget(self.edit_label, 1)
        bar_layout.addWidget(self.edit_cancel_button)
        self.edit_bar.hide()

        self.send_button = QPushButton("Send", self)
        self.send_button.setObjectName("sendButton")
        self.send_button.setDefault(False)
        self.send_button.setAutoDefault(False)
        self.send_button.clicked.connect(self._on_send_button_clicked)
        self.stop_button = QPushButton("Stop", self)
        self.stop_button.setObjectName("stopButton")
        self.stop_button.setToolTip("Stop the reply (Esc)")
        self.stop_button.clicked.connect(self.sig_stop_requested)
        self.regenerate_button = QPushButton("Regenerate", self)
        self.regenerate_button.setObjectName("regenerateButton")
        self.regenerate_button.setToolTip("Write the last reply again (Ctrl+R)")
        self.regenerate_button.clicked.connect(self.sig_regenerate_requested)

        self.hint = QLabel("Enter sends \u00b7 Shift+Enter adds a line \u00b7 Esc stops", self)
        self.hint.setObjectName("composerHint")
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.setSpacing(6)
        buttons.addWidget(self.attach_button)
        buttons.addWidget(self.hint, 1)
        buttons.addWidget(self.regenerate_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.send_button)

        self._buttons = buttons
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 8, 16, 8)
        layout.setSpacing(6)
        layout.addWidget(self.edit_bar)
        layout.addWidget(self.attachments)
        layout.addWidget(self.edit)
        layout.addLayout(buttons)
        self._can_regenerate = False
        self._update_buttons()

    def dragEnterEvent(self, event) -> None:
        if mime_has_images(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self._on_edit_images_offered(event.mimeData())
        event.acceptProposedAction()

    def add_option(self, widget) -> None:
        """A per-chat option (such as the thinking toggle) on the left of the buttons row."""
        self._buttons.insertWidget(0, widget)

    # -- state from the window

    def set_generating(self, generating: bool) -> None:
        self._generating = generating
        self._update_buttons()

    def set_can_send(self, can_send: bool, reason: str = "") -> None:
        self._can_send = can_send
        self.send_button.setToolTip(reason or "Send (Enter)")
        self._update_buttons()

    def set_can_regenerate(self, can_regenerate: bool) -> None:
        self._can_regenerate = can_regenerate
        self._update_buttons()

    @property
    def editing_message_id(self) -> str:
        return self._editing_id

    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)
        cursor = self.edit.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        self.edit.setTextCursor(cursor)

    def begin_edit(self, message_id: str, text: str) -> None:
        self._editing_id = message_id
        self.set_text(text)
        self.edit_bar.show()
        self.edit.setFocus()
        self._update_buttons()

    def cancel_edit(self) -> None:
        if not self._editing_id:
            return
        self._editing_id = ""
        self.edit_bar.hide()
        self.edit.clear()
        self._update_buttons()
        self.edit_cancelled.emit()

    def submit(self) -> bool:
        """Sends what is typed (or the edit); False when there is nothing to send or it cannot go now."""
        text = self.text().strip()
        if not (text or self.attachments.sources()) or self._generating or not self._can_send:
            return False
        editing = self._editing_id
        self.edit.clear()
        if editing:
            self._editing_id = ""
            self.edit_bar.hide()
            self.sig_edit_submitted.emit(editing, text)
        else:
            self.sig_send_requested.emit(text)
        self._update_buttons()
        return True

    # -- slots

    def _on_edit_submitted(self) -> None:
        self.submit()

    def _on_send_button_clicked(self) -> None:
        self.submit()

    def _on_edit_images_offered(self, mime: QMimeData) -> None:
        if self.attach_button.isEnabled():
            self.attachments.add_mime(mime)
        else:
            self.attachments.show_problem(self.attach_button.toolTip())

    def _on_edit_escape_pressed(self) -> None:
        if self._generating:
            self.sig_stop_requested.emit()
        elif self._editing_id:
            self.cancel_edit()

    def _update_buttons(self) -> None:
        has_text = bool(self.edit.toPlainText().strip()) or bool(self.attachments.sources())
        self.send_button.setText("Resend" if self._editing_id else "Send")
        self.send_button.setEnabled(has_text and self._can_send and not self._generating)
        self.stop_button.setEnabled(self._generating)
        self.regenerate_button.setEnabled(self._can_regenerate and self._can_send and not self._generating)
