"""The window's side of rewriting a selection in place: the Chat menu's actions and shortcuts, the
instruction prompt, and the plain messages when a rewrite cannot run or fails."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QInputDialog, QMenu

REWRITE_SHORTCUT = "Ctrl+Shift+R"
REWRITE_WITH_INSTRUCTION_SHORTCUT = "Ctrl+Shift+I"
NO_SELECTION = "Select some text in one of the model's replies first: click the reply, then drag over the words."


@dataclass
class SpanRewriteActions:
    rewrite: QAction
    rewrite_with_instruction: QAction
    undo: QAction
    redo: QAction
    window: object

    def request(self, with_instruction: bool) -> str:
        """Rewrites the text selected in the transcript (asking for an instruction first if wanted).
        Returns "" when it started (or the prompt opened), else the message shown to the user."""
        view = self.window.transcript_view
        message_id = view.selected_message_id()
        span = view.selected_source_span(message_id) if message_id else None
        if span is None:
            self._refuse(NO_SELECTION)
            return NO_SELECTION
        return self.rewrite_span(message_id, span[0], span[1], with_instruction)

    def rewrite_span(self, message_id: str, start: int, end: int, with_instruction: bool) -> str:
        rewrites = self.window.controller.rewrites
        reason = rewrites.why_not(message_id)
        if reason:
            self._refuse(reason)
            return reason
        if with_instruction:
            self._ask_instruction(message_id, start, end)
            return ""
        return self._start(message_id, start, end, "")

    def _start(self, message_id: str, start: int, end: int, instruction: str) -> str:
        reason = self.window.controller.rewrites.start(message_id, start, end, instruction)
        if reason:
            self._refuse(reason)
        return reason

    def _ask_instruction(self, message_id: str, start: int, end: int) -> None:
        window = self.window
        dialog = QInputDialog(window)
        dialog.setObjectName("rewriteInstructionDialog")
        dialog.setWindowTitle("Rewrite with instruction")
        info = window.client.model_info
        note = (
            "\n(The demo model was not trained on instructions and mostly ignores them.)"
            if info is not None and getattr(info, "is_demo", False)
            else ""
        )
        dialog.setLabelText(f"How should the selected text be rewritten? For example: shorter, more formal.{note}")
        dialog.setInputMode(QInputDialog.InputMode.TextInput)
        dialog.setOkButtonText("Rewrite")
        dialog.textValueSelected.connect(lambda text: self._start(message_id, start, end, text))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()

    def _refuse(self, text: str) -> None:
        self.window.banner.show_error("The selection was not rewritten.", text, offer_setup=False)

    def undo_last(self) -> bool:
        rewrites = self.window.controller.rewrites
        target = rewrites.undo_target(self.window.transcript_view.selected_message_id())
        return bool(target) and rewrites.undo(target)

    def redo_last(self) -> bool:
        rewrites = self.window.controller.rewrites
        selected = self.window.transcript_view.selected_message_id()
        if selected and rewrites.can_redo(selected):
            return rewrites.redo(selected)
        for message in reversed(self.window.controller.transcript.items()):
            if rewrites.can_redo(message.id):
                return rewrites.redo(message.id)
        return False


def attach_span_rewrite(window) -> SpanRewriteActions:
    """Adds Rewrite selection / with instruction / Undo / Redo rewrite to the window's Chat menu."""

    def action(text: str, shortcut: str | QKeySequence.StandardKey, name: str) -> QAction:
        created = QAction(text, window)
        created.setShortcut(QKeySequence(shortcut))
        created.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        created.setObjectName(name)
        window.addAction(created)
        return created

    actions = SpanRewriteActions(
        rewrite=action("Re&write selection", REWRITE_SHORTCUT, "rewriteAction"),
        rewrite_with_instruction=action(
            "Rewrite selection with &instruction\u2026", REWRITE_WITH_INSTRUCTION_SHORTCUT, "rewriteWithInstructionAction"
        ),
        undo=action("&Undo rewrite", QKeySequence.StandardKey.Undo, "undoRewriteAction"),
        redo=action("Redo rewrite", QKeySequence.StandardKey.Redo, "redoRewriteAction"),
        window=window,
    )
    actions.rewrite.triggered.connect(lambda: actions.request(False))
    actions.rewrite_with_instruction.triggered.connect(lambda: actions.request(True))
    actions.undo.triggered.connect(actions.undo_last)
    actions.redo.triggered.connect(actions.redo_last)

    chat_menu = next(
        (a.menu() for a in window.menuBar().actions() if isinstance(a.menu(), QMenu) and a.text() == "&Chat"), None
    )
    if chat_menu is not None:
        chat_menu.addSeparator()
        for each in (actions.rewrite, actions.rewrite_with_instruction, actions.undo, actions.redo):
            chat_menu.addAction(each)

    view, rewrites = window.transcript_view, window.controller.rewrites
    view.sig_rewrite_requested.connect(actions.rewrite_span)
    view.sig_undo_rewrite_requested.connect(rewrites.undo)
    view.sig_redo_rewrite_requested.connect(rewrites.redo)
    rewrites.failed.connect(lambda _message_id, text: actions._refuse(text))

    def on_finished(_message_id: str, outcome: str) -> None:
        if outcome == "rewritten":
            window.statusBar().showMessage("Rewrote the selection \u00b7 Ctrl+Z undoes it", 6000)
        elif outcome == "unchanged":
            window.statusBar().showMessage("The model wrote the same words again: nothing changed", 6000)
        elif outcome == "cancelled":
            window.statusBar().showMessage("Rewrite stopped: the reply is unchanged", 4000)

    rewrites.finished.connect(on_finished)
    return actions

