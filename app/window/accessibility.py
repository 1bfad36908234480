"""Accessible names and descriptions for the main window's controls, keyboard selection of
messages, the reply in progress announced as "generating, canvas N", and the check that finds
any interactive widget a screen reader could not name (used by the tests on every window)."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QAccessible
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSlider,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QHeaderView,
    QLineEdit,
    QPlainTextEdit,
    QScrollBar,
    QTabBar,
    QTextEdit,
    QWidget,
)

from app.chat.message_text import generating_text
from app.chat.qt_models import MessageRole

TRANSCRIPT_DESCRIPTION = "The messages of the open chat; arrow keys move between them, the menu key acts on one"

# objectName -> (accessible name, description) for controls whose visible text does not say it all.
CONTROL_NAMES: dict[str, tuple[str, str]] = {
    "newChatButton": ("New chat", "Start a new chat (Ctrl+N)"),
    "searchField": ("Search chats", "Finds chats by title or message text (Ctrl+F)"),
    "conversationList": ("Chats", "Your chats, most recent first; F2 renames, Delete deletes"),
    "undoDeleteButton": ("Undo delete", "Bring back the chat just deleted"),
    "transcriptView": ("Chat messages", TRANSCRIPT_DESCRIPTION),
    "composerEdit": ("Message", "Type a message; Enter sends, Shift+Enter adds a line"),
    "sendButton": ("Send", "Send the message (Enter)"),
    "stopButton": ("Stop", "Stop the reply (Esc)"),
    "regenerateButton": ("Regenerate", "Write the last reply again (Ctrl+R)"),
    "thinkingToggle": ("Think first", "The model reasons before answering; saved with this chat"),
    "emptyChatLabel": ("Welcome", "How to start a chat, with example questions"),
    "engineStatus": ("Engine status", "What the engine is doing and which model is loaded"),
    "crashLog": ("Engine log", "The last lines the engine wrote before it stopped"),
    "localServerUrl": ("Server base URL", "The address other programs use to reach the local server"),
    "localServerLog": ("Server request log", "Each request to the local server with its status and speed"),
}

_INTERACTIVE = (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSlider,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLineEdit,
    QPlainTextEdit,
    QTabBar,
    QTextEdit,
)


def attach_accessibility(window) -> None:
    """Names the window's controls, lets the keyboard pick a message, announces a reply in progress."""
    for name, (text, description) in CONTROL_NAMES.items():
        for widget in window.findChildren(QWidget, name):
            if not widget.accessibleName():
                widget.setAccessibleName(text)
            if not widget.accessibleDescription():
                widget.setAccessibleDescription(description)
    edit_cancel = getattr(window.composer, "edit_cancel_button", None)
    if edit_cancel is not None:
        edit_cancel.setAccessibleName("Cancel editing")
    view = window.transcript_view
    view.selectionModel().currentChanged.connect(lambda current, _previous: _select_current(view, current))
    window.transcript_model.dataChanged.connect(
        lambda top_left, _bottom_right, roles=(): _announce_generation(view, top_left, roles)
    )
    window.controller.reply_finished.connect(lambda *_: view.setAccessibleDescription(TRANSCRIPT_DESCRIPTION))


def _select_current(view, current: QModelIndex) -> None:
    """The keyboard's current message becomes the selected one (its actions and context menu)."""
    if QApplication.mouseButtons() != Qt.MouseButton.NoButton:
        return  # a click: the view's own mouse handling decides what it selects
    message_id = current.data(MessageRole.ID) if current.isValid() else ""
    if message_id and message_id != view.selected_message_id():
        view.select_message(message_id)


def _announce_generation(view, index: QModelIndex, roles) -> None:
    """While a reply streams, the transcript's description says "Generating, canvas N" (Qt tells
    screen readers when a description changes); the noise of the open canvas is never read."""
    if roles and int(MessageRole.DRAFT) not in [int(r) for r in roles]:
        return
    message = index.data(MessageRole.MESSAGE) if index.isValid() else None
    if message is None or message.status != "streaming" or message.draft is None:
        return
    announced = generating_text(message).capitalize()
    if view.accessibleDescription() != announced:
        view.setAccessibleDescription(announced)


def accessible_name(widget: QWidget) -> str:
    """What a screen reader would call the widget (Qt's accessibility interface, as AT sees it)."""
    interface = QAccessible.queryAccessibleInterface(widget)
    return interface.text(QAccessible.Text.Name).strip() if interface is not None else ""


def is_interactive(widget: QWidget) -> bool:
    """A control the user acts on (not the scroll bars and inner editors Qt builds into others)."""
    if isinstance(widget, (QScrollBar, QHeaderView)):
        return False  # named by their role and sections
    ancestor = widget.parentWidget()
    while ancestor is not None:
        if isinstance(ancestor, QComboBox):
            return False  # the combo box's own popup list: the combo box is the control
        ancestor = ancestor.parentWidget()
    parent = widget.parentWidget()
    if isinstance(parent, (QAbstractSpinBox, QComboBox)) or (isinstance(parent, QLineEdit) and isinstance(widget, QAbstractButton)):
        return False  # a spin box's or combo box's own line edit; a line edit's clear button
    if widget.objectName().startswith("qt_"):
        return False  # Qt's internal parts (scroll area corners, tab bar scrollers...)
    return isinstance(widget, _INTERACTIVE) or (
        isinstance(widget, QWidget) and widget.focusPolicy() & Qt.FocusPolicy.TabFocus and widget.testAttribute(Qt.WidgetAttribute.WA_InputMethodEnabled)
    )


def unnamed_controls(root: QWidget) -> list[str]:
    """Every interactive widget under `root` that has no accessible name, described for a failure message."""
    missing = []
    for widget in [root, *root.findChildren(QWidget)]:
        if is_interactive(widget) and not accessible_name(widget):
            missing.append(f"{type(widget).__name__} {widget.objectName() or '(no objectName)'} in {_path(widget)}")
    return missing


def _path(widget: QWidget) -> str:
    names = []
    parent = widget.parentWidget()
    while parent is not None:
        names.append(parent.objectName() or type(parent).__name__)
        parent = parent.parentWidget()
    return " < ".join(names)
