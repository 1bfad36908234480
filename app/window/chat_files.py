"""File ▸ Export chat…, Export all chats…, Import chats…: the options dialog, the file dialogs and
the messages around `app.chat.export` (the format) and `ChatStore.import_chats` (one transaction)."""

from __future__ import annotations

import logging
import re
import shutil
from importlib import metadata
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from app.chat.export import ExportedChat, ImportRefused, chat_of, chats_to_json, chats_to_markdown, read_chats_file
from app.chat.attachments import SUFFIXES
from app.chat.store import StoreWriteError
from app.window.attachment_strip import check_image

log = logging.getLogger("canvas_chat.chat_files")

MARKDOWN_FILTER = "Markdown (*.md)"
JSON_FILTER = "Canvas Chat export (*.json)"


def _app_version() -> str:
    try:
        return metadata.version("canvas-chat")
    except metadata.PackageNotFoundError:
        return ""


def _file_name(title: str, suffix: str) -> str:
    stem = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', " ", title).strip(" .")[:60] or "chat"
    return stem + suffix


def write_markdown_images(markdown_path: Path, chats: list[ExportedChat]) -> dict[str, str]:
    """Copies the chats' images into a `<name>_images` folder beside the Markdown file; returns
    attachment id -> the link to put in the Markdown (relative to it). An image whose file is gone
    gets no link (the Markdown names it). OSError reaches the caller with the folder removed."""
    attachments = [a for chat in chats for m in chat.messages for a in m.attachments if a.path.is_file()]
    if not attachments:
        return {}
    folder = markdown_path.with_name(markdown_path.stem + "_images")
    created = not folder.exists()
    links = {}
    try:
        folder.mkdir(exist_ok=True)
        for number, attachment in enumerate(attachments, start=1):
            stem = _file_name(Path(attachment.name).stem, "")
            target = folder / f"{number:02d}-{stem}{SUFFIXES[attachment.media_type]}"
            shutil.copyfile(attachment.path, target)
            links[attachment.id] = f"{folder.name}/{target.name}"
    except OSError:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return links


class ExportOptionsDialog(QDialog):
    """Markdown (to read) or JSON (to import again), and whether JSON carries the recorded drafts."""

    def __init__(self, title: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("exportOptionsDialog")
        self.setWindowTitle(title)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Export as:", self))
        self.markdown_radio = QRadioButton("Markdown: a readable transcript (its images in a folder beside it)", self)
        self.json_radio = QRadioButton("JSON: everything, to import again (messages, images, times, settings, stats)", self)
        self.replay_check = QCheckBox("Include the recorded drafts, so that Replay works after an import (bigger file)", self)
        self.replay_check.setContentsMargins(20, 0, 0, 0)
        for widget in (self.markdown_radio, self.json_radio, self.replay_check):
            layout.addWidget(widget)
        self.markdown_radio.setAccessibleName("Export as Markdown")
        self.json_radio.setAccessibleName("Export as JSON")
        self.replay_check.setAccessibleName("Include the recorded drafts")
        self.json_radio.setChecked(True)
        self.json_radio.toggled.connect(self.replay_check.setEnabled)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export\u2026")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    @property
    def as_json(self) -> bool:
        return self.json_radio.isChecked()

    @property
    def include_replay(self) -> bool:
        return self.as_json and self.replay_check.isChecked()


class ChatFiles(QObject):
    """The three File-menu actions of one main window."""

    exported = Signal(str)  # the path written
    imported = Signal(list)  # the new conversations

    def __init__(self, window: QMainWindow):
        super().__init__(window)
        self.window = window
        self.options_dialog: ExportOptionsDialog | None = None
        self.message_box: QMessageBox | None = None  # the last error shown (tests read it)
        self.export_chat_action = self._action("&Export chat\u2026", self.export_chat, "exportChatAction")
        self.export_all_action = self._action("Export &all chats\u2026", self.export_all_chats, "exportAllChatsAction")
        self.import_action = self._action("&Import chats\u2026", self.import_chats, "importChatsAction")

    def _action(self, text: str, slot, name: str) -> QAction:
        action = QAction(text, self.window)
        action.setObjectName(name)
        action.triggered.connect(slot)
        self.window.addAction(action)
        return action

    # -- export

    def export_chat(self) -> ExportOptionsDialog | None:
        conversation_id = self.window.controller.current_conversation_id
        if not conversation_id:
            self.window.statusBar().showMessage("Open a chat to export it.", 3000)
            return None
        return self._ask_options("Export chat", [conversation_id])

    def export_all_chats(self) -> ExportOptionsDialog | None:
        ids = [conversation.id for conversation in self.window.store.list_conversations()]
        if not ids:
            self.window.statusBar().showMessage("There are no chats to export.", 3000)
            return None
        return self._ask_options("Export all chats", ids)

    def _ask_options(self, title: str, conversation_ids: list[str]) -> ExportOptionsDialog:
        dialog = ExportOptionsDialog(title, self.window)
        self.options_dialog = dialog
        dialog.accepted.connect(lambda: self._save(conversation_ids, dialog.as_json, dialog.include_replay))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    def _chats(self, conversation_ids: list[str]) -> list[ExportedChat]:
        store = self.window.store
        chats = []
        for conversation_id in conversation_ids:
            conversation = store.get_conversation(conversation_id)
            if conversation is not None:
                chat = chat_of(conversation, store.messages(conversation_id))
                chat.settings = store.conversation_settings(conversation_id)  # the chat panel's, if any
                chats.append(chat)
        return chats

    def _save(self, conversation_ids: list[str], as_json: bool, include_replay: bool) -> None:
        self.options_dialog = None
        chats = self._chats(conversation_ids)
        if not chats:
            return
        suffix, file_filter = (".json", JSON_FILTER) if as_json else (".md", MARKDOWN_FILTER)
        name = _file_name(chats[0].conversation.title if len(chats) == 1 else "Canvas Chat chats", suffix)
        path, _ = QFileDialog.getSaveFileName(self.window, "Export chats", str(Path.home() / name), file_filter)
        if not path:
            return
        if not Path(path).suffix:
            path += suffix
        try:
            if as_json:
                text = chats_to_json(chats, include_replay, _app_version())
            else:
                text = chats_to_markdown(chats, write_markdown_images(Path(path), chats))
            Path(path).write_text(text, encoding="utf-8")
        except OSError as exc:
            self._show_error("The chats could not be exported.", f"{path}: {exc.strerror or exc}")
            return
        count = f"{len(chats)} chats" if len(chats) > 1 else "The chat"
        self.window.statusBar().showMessage(f"{count} exported to {path}", 5000)
        self.exported.emit(path)

    # -- import

    def import_chats(self) -> list:
        path, _ = QFileDialog.getOpenFileName(self.window, "Import chats", str(Path.home()), f"{JSON_FILTER};;All files (*)")
        if not path:
            return []
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)  # checking every draft and image takes a moment
        try:
            chats = read_chats_file(Path(path), check_image)
        except ImportRefused as exc:
            self._show_error("Nothing was imported.", str(exc))
            return []
        finally:
            QApplication.restoreOverrideCursor()
        if not chats:
            self._show_error("Nothing was imported.", "The file holds no chats.")
            return []
        try:
            conversations = self.window.store.import_chats(chats)
        except StoreWriteError as exc:
            self._show_error("Nothing was imported.", str(exc))
            return []
        controller = self.window.controller
        for conversation in conversations:
            controller.conversations.insert_sorted(conversation)
        controller.open_conversation(conversations[0].id)
        self.window.sidebar.refresh_search()
        count = f"{len(conversations)} chats" if len(conversations) > 1 else "1 chat"
        self.window.statusBar().showMessage(f"Imported {count} from {Path(path).name}", 5000)
        self.imported.emit(conversations)
        return conversations

    def _show_error(self, text: str, detail: str) -> None:
        log.info("%s %s", text, detail)
        box = QMessageBox(QMessageBox.Icon.Warning, "Canvas Chat", text, QMessageBox.StandardButton.Ok, self.window)
        box.setInformativeText(detail)
        box.setObjectName("chatFilesMessage")
        box.finished.connect(box.deleteLater)
        self.message_box = box
        box.open()


def attach_chat_files(window: QMainWindow) -> ChatFiles:
    """Adds the export and import entries to the window's File menu, above Settings."""
    files = ChatFiles(window)
    file_menu = None
    for action in window.menuBar().actions():
        if action.menu() is not None and action.text().replace("&", "") == "File":
            file_menu = action.menu()
            break
    if file_menu is not None:
        before = window.settings_action
        for action in (files.export_chat_action, files.export_all_action, files.import_action):
            file_menu.insertAction(before, action)
        file_menu.insertSeparator(before)
    return files
