"""The main window: sidebar, transcript, composer, engine status and banner, menus and shortcuts.

It wires the widgets to `ConversationController` and `EngineClient`; it owns no chat data.
"""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import html
import importlib
import importlib.util
import logging
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QKeySequence
from PySide6.QtWidgets import QApplication, QLabel, QMainWindow, QSplitter, QVBoxLayout, QWidget

from app.setup.model_choice import ModelChoice, choose_model
from app.window.composer import Composer
from app.window.attachment_strip import attach_state
from app.chat.controller import ConversationController
from app.window.engine_status import EngineBanner, EngineStatus
from app.worker.engine_client import EngineClient, EngineState
from app.chat.qt_models import ConversationListModel, TranscriptListModel
from app.settings import Settings, save_settings
from app.window.chat_files import attach_chat_files
from app.window.local_server import LocalServerDialog, attach_local_server
from app.remote.connection import attach_remote_connection
from app.window.settings_dialog import SettingsDialog
from app.window.sidebar import Sidebar
from app.window.span_rewrite import attach_span_rewrite
from app.window.thinking_toggle import attach_thinking_toggle
from app.window.about import attach_about
from app.window.accessibility import attach_accessibility
from app.window.chat_panel import attach_chat_panel
from app.window.context_meter import attach_context_meter
from app.chat.store import ChatStore
from app.theme import apply_theme, resolve_theme
from app.transcript.replay_bar import attach_replay_bar
from app.transcript.view import TranscriptView
from engine.protocol import MODEL_LOAD_ERROR_CODES, MODEL_SETUP_ERROR_CODES, Error, LoadProgress, ModelLoaded

log = logging.getLogger("canvas_chat.window")

# Clickable on the empty chat while the demo model is loaded: one question per skill it knows.
DEMO_EXAMPLE_PROMPTS = (
    "What is the capital of Peru?",
    "What colour is a banana?",
    "Reverse the words: red green blue",
    "How many words are in: the cat sat",
    "What is 3 + 4?",
    "What can you do?",
)


class MainWindow(QMainWindow):
    """The chat window. `start_engine()` launches the worker (call it after `show()`)."""

    model_ready = Signal(object)  # ModelLoaded

    def __init__(self, settings: Settings, store: ChatStore, client: EngineClient, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("Canvas Chat")
        self.resize(1180, 780)
        self.settings = settings
        self.store = store
        self.client = client
        self.controller = ConversationController(store, client, settings, self)
        self.colors = resolve_theme(settings.theme)
        self._settings_dialog: SettingsDialog | None = None
        self._model_setup_window: QWidget | None = None
        self._model_choice: ModelChoice | None = None
        self._closing = False
        self._model_name = ""

        self.conversation_model = ConversationListModel(self.controller.conversations, self)
        self.transcript_model = TranscriptListModel(self.controller.transcript, self)

        self.sidebar = Sidebar(self.conversation_model, self.controller.search, self)
        self.transcript_view = TranscriptView(self)
        self.transcript_view.setModel(self.transcript_model)
        self.composer = Composer(self)
        self.banner = EngineBanner(self)
        self.engine_status = EngineStatus(self)
        self.empty_label = QLabel(self)
        self.empty_label.setObjectName("emptyChatLabel")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setWordWrap(True)
        self.empty_label.setTextInteractionFlags(Qt.TextInteractionFlag.LinksAccessibleByMouse | Qt.TextInteractionFlag.LinksAccessibleByKeyboard)
        self.empty_label.linkActivated.connect(self._on_empty_label_link_activated)

        chat_area = QWidget(self)
        chat_layout = QVBoxLayout(chat_area)
        chat_layout.setContentsMargins(0, 0, 0, 0)
        chat_layout.setSpacing(0)
        banner_holder = QVBoxLayout()
        banner_holder.setContentsMargins(12, 8, 12, 0)
        banner_holder.addWidget(self.banner)
        chat_layout.addLayout(banner_holder)
        chat_layout.addWidget(self.empty_label, 1)
        chat_layout.addWidget(self.transcript_view, 1)
        chat_layout.addWidget(self.composer)

        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        splitter.setObjectName("mainSplitter")
        splitter.addWidget(self.sidebar)
        splitter.addWidget(chat_area)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([260, 920])
        splitter.setChildrenCollapsible(False)
        self.sidebar.setMinimumWidth(180)
        self.setCentralWidget(splitter)
        self.statusBar().addPermanentWidget(self.engine_status, 1)
        self.statusBar().setSizeGripEnabled(False)

        self._build_actions()
        self._build_menus()
        self._connect()
        self.local_server = attach_local_server(self)
        self.thinking_toggle = attach_thinking_toggle(self)
        self.chat_files = attach_chat_files(self)
        self.replay_bar = attach_replay_bar(self)
        self.remote = attach_remote_connection(self)
        self.chat_panel = attach_chat_panel(self)
        self.context_meter = attach_context_meter(self)
        self.about_action = attach_about(self)
        self.span_rewrite = attach_span_rewrite(self)
        self.apply_settings(settings, save=False)
        if len(self.controller.conversations):
            # The app reopens where the user left off: the most recently used chat.
            self.controller.open_conversation(self.controller.conversations[0].id)
        self._update_empty_state()
        self._on_client_state_changed(client.state)
        attach_accessibility(self)
        self.composer.edit.setFocus()

    # ------------------------------------------------------------------ building

    def _action(self, text: str, slot, shortcut=None, name: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        action.triggered.connect(slot)
        if name:
            action.setObjectName(name)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.new_chat_action = self._action("&New chat", self.new_chat, QKeySequence.StandardKey.New, "newChatAction")
        self.settings_action = self._action("&Settings\u2026", self.open_settings, "Ctrl+,", "settingsAction")
        self.quit_action = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit, "quitAction")
        self.send_action = self._action("S&end", self.composer.submit, None, "sendAction")
        self.stop_action = self._action("S&top", self._on_stop_action_triggered, "Esc", "stopAction")
        self.regenerate_action = self._action("&Regenerate", self.regenerate, "Ctrl+R", "regenerateAction")
        self.search_action = self._action("&Search chats", self.sidebar.focus_search, QKeySequence.StandardKey.Find, "searchAction")
        self.focus_composer_action = self._action("&Write a message", self._focus_composer, "Ctrl+L", "focusComposerAction")
        self.copy_reply_action = self._action("&Copy last reply", self.copy_last_reply, "Ctrl+Shift+C", "copyReplyAction")
        self.replay_action = self._action("Re&play last reply", self.replay_last_reply, "Ctrl+Shift+P", "replayAction")
        self.rename_action = self._action("Re&name chat", self._on_rename_action_triggered, "F2", "renameAction")
        self.delete_action = self._action("&Delete chat", self._on_delete_action_triggered, None, "deleteAction")
        self.restart_action = self._action("&Restart the engine", self.client.restart, None, "restartAction")
        self.model_setup_action = self._action("&Model setup\u2026", self.open_model_setup, None, "modelSetupAction")
        self.model_setup_action.setEnabled(importlib.util.find_spec("app.setup.dialog") is not None)
        self.local_server_action = self._action("&Local server\u2026", self.open_local_server, None, "localServerAction")

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        file_menu.addAction(self.new_chat_action)
        file_menu.addSeparator()
        file_menu.addAction(self.settings_action)
        file_menu.addAction(self.local_server_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        chat_menu = bar.addMenu("&Chat")
        for action in (self.send_action, self.stop_action, self.regenerate_action, None, self.copy_reply_action,
                       self.replay_action, None, self.search_action, self.focus_composer_action, None,
                       self.rename_action, self.delete_action):
            chat_menu.addSeparator() if action is None else chat_menu.addAction(action)
        model_menu = bar.addMenu("&Model")
        model_menu.setObjectName("modelMenu")
        model_menu.addAction(self.model_setup_action)
        model_menu.addAction(self.restart_action)

    def _connect(self) -> None:
        client, controller = self.client, self.controller
        client.state_changed.connect(self._on_client_state_changed)
        client.load_progressed.connect(self._on_client_load_progressed)
        client.model_loaded.connect(self._on_client_model_loaded)
        client.worker_crashed.connect(self._on_client_worker_crashed)
        client.error_received.connect(self._on_client_error_received)
        controller.generating_changed.connect(self._on_controller_generating_changed)
        controller.reply_started.connect(self._on_controller_reply_started)
        controller.reply_finished.connect(self._on_controller_reply_finished)
        controller.conversation_opened.connect(self._on_controller_conversation_opened)
        controller.store_failed.connect(self._on_controller_store_failed)
        self.sidebar.sig_new_requested.connect(self.new_chat)
        self.sidebar.sig_conversation_selected.connect(self._on_sidebar_conversation_selected)
        self.sidebar.sig_rename_requested.connect(controller.rename_conversation)
        self.sidebar.sig_delete_requested.connect(self.delete_chat)
        self.sidebar.sig_undo_delete_requested.connect(self._on_sidebar_undo_delete_requested)
        self.composer.sig_send_requested.connect(self._on_composer_send_requested)
        self.composer.sig_edit_submitted.connect(self._on_composer_edit_submitted)
        self.composer.sig_stop_requested.connect(self.stop)
        self.composer.sig_regenerate_requested.connect(self.regenerate)
        self.transcript_view.sig_edit_requested.connect(self.begin_edit)
        self.transcript_view.sig_regenerate_requested.connect(self._on_transcript_regenerate_requested)
        self.transcript_view.sig_replay_requested.connect(self.replay)
        self.transcript_view.copied.connect(self._on_transcript_copied)
        self.transcript_view.replay_finished.connect(self._on_transcript_replay_finished)
        self.transcript_model.rowsInserted.connect(self._update_empty_state)
        self.transcript_model.rowsRemoved.connect(self._update_empty_state)
        self.transcript_model.modelReset.connect(self._update_empty_state)
        self.banner.sig_restart_requested.connect(self._on_banner_restart_requested)
        self.banner.sig_model_setup_requested.connect(self.open_model_setup)
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._on_style_hints_color_scheme_changed)

    # ------------------------------------------------------------------ engine

    def start_engine(self, model: str | None = None, open_setup_if_missing: bool = False) -> bool:
        """Starts the worker and loads `model` (default: settings, then the demo model)."""
        if model is None:
            self._model_choice = choose_model(self.settings)
            model = self._model_choice.model
        else:
            self._model_choice = ModelChoice(model, "", False)
        if model is None:
            self.banner.show_error(
                "No model is set up yet.",
                "Open Model \u25b8 Model setup\u2026 to download DiffusionGemma or choose a model folder.",
                offer_setup=self.model_setup_action.isEnabled(),
            )
            if open_setup_if_missing and self.model_setup_action.isEnabled():
                self.open_model_setup()
            return False
        self._model_name = Path(model).name or model
        self._update_empty_state()
        self.client.start(model, self.settings.device, self.settings.quantization)
        return True

    def _on_client_state_changed(self, state: EngineState) -> None:
        info = self.client.model_info
        self.engine_status.show_state(state)
        if state == EngineState.READY and info is not None:
            name = "Demo model (toy skills only)" if getattr(info, "is_demo", False) else Path(info.model).name
            self.engine_status.model_label.setText(f"{name} \u00b7 {info.device}")
        elif state == EngineState.READY:
            self.engine_status.show_no_model()
        elif state in (EngineState.CRASHED, EngineState.STOPPED, EngineState.RESTARTING, EngineState.STARTING):
            self.engine_status.model_label.setText("")
        if state in (EngineState.READY, EngineState.GENERATING) and self.banner.kind == "crash":
            self.banner.hide()
            self.banner.kind = ""
        self.restart_action.setEnabled(not self._closing)

    def _on_client_load_progressed(self, progress: LoadProgress) -> None:
        self.engine_status.show_progress(progress.fraction, progress.message)

    def _on_client_model_loaded(self, info: ModelLoaded) -> None:
        if self.banner.kind == "error":
            self.banner.hide()
            self.banner.kind = ""
        self._on_client_state_changed(self.client.state)
        self._update_empty_state()
        self.composer.attach_button.set_model_accepts_images(*attach_state(info, remote=self.remote.backend is not None))
        self.model_ready.emit(info)

    def _on_client_worker_crashed(self, exit_code: int, log_lines: list) -> None:
        if self._closing:
            return
        self.banner.show_crash(
            exit_code, list(log_lines), self.client.state == EngineState.RESTARTING, self.client.last_exit_description
        )

    def _on_client_error_received(self, error: Error) -> None:
        if self._closing:
            return
        self.banner.show_error(
            "The model could not be loaded." if error.code in MODEL_LOAD_ERROR_CODES else "The engine reported an error.",
            error.message,
            offer_setup=error.code in MODEL_SETUP_ERROR_CODES and self.model_setup_action.isEnabled(),
        )

    def _on_banner_restart_requested(self) -> None:
        self.banner.hide()
        self.banner.kind = ""
        if self.client.model_info is None and self.client.state in (EngineState.STOPPED,):
            self.start_engine()
        else:
            self.client.restart()

    # ------------------------------------------------------------------ chats

    def new_chat(self) -> None:
        if self.controller.is_generating:
            self.controller.stop()
        self.controller.new_conversation()
        self.composer.cancel_edit()
        self._focus_composer()

    def delete_chat(self, conversation_id: str) -> None:
        conversation = self.controller.conversations.get(conversation_id)
        if conversation is None:
            return
        self.controller.delete_conversation(conversation_id)
        self.sidebar.show_undo(conversation_id, conversation.title)
        self.sidebar.refresh_search()

    def _on_sidebar_undo_delete_requested(self, conversation_id: str) -> None:
        if self.controller.undo_delete_conversation(conversation_id) is not None:
            self.controller.open_conversation(conversation_id)
            self.sidebar.refresh_search()

    def _on_sidebar_conversation_selected(self, conversation_id: str) -> None:
        if conversation_id and conversation_id != self.controller.current_conversation_id:
            self.composer.cancel_edit()
            self.controller.open_conversation(conversation_id)

    def _on_controller_conversation_opened(self, conversation_id: str) -> None:
        self.sidebar.select_conversation(conversation_id)
        conversation = self.controller.conversations.get(conversation_id) if conversation_id else None
        self.setWindowTitle(f"{conversation.title} \u2014 Canvas Chat" if conversation else "Canvas Chat")
        self._update_regenerate()
        self._update_empty_state()
        self.transcript_view.scroll_to_end()

    def _on_rename_action_triggered(self) -> None:
        if self.sidebar.list_view.hasFocus():
            self.sidebar.rename_current()
            return
        conversation_id = self.controller.current_conversation_id
        if conversation_id:
            self.sidebar.select_conversation(conversation_id)
            self.sidebar.rename_current()

    def _on_delete_action_triggered(self) -> None:
        conversation_id = self.controller.current_conversation_id
        if conversation_id:
            self.delete_chat(conversation_id)

    # ------------------------------------------------------------------ replies

    def send(self, text: str, images: list | None = None) -> str | None:
        """Sends a message as if typed, with images (`ImageSource`s) if given (returns the reply's
        message id, or None)."""
        message_id = self.controller.send(text, images or [])
        self.sidebar.refresh_search()
        return message_id

    def _on_composer_send_requested(self, text: str) -> None:
        if self.send(text, self.composer.attachments.sources()) is None:
            self.composer.set_text(text)
        else:
            self.composer.attachments.clear()

    def _on_composer_edit_submitted(self, message_id: str, text: str) -> None:
        if self.controller.edit_and_resend(message_id, text, self.composer.attachments.sources()) is None:
            self.composer.begin_edit(message_id, text)
        else:
            self.composer.attachments.clear()

    def begin_edit(self, message_id: str) -> None:
        message = self.controller.transcript.get(message_id)
        if message is None or message.role != "user" or self.controller.is_generating:
            return
        self.composer.begin_edit(message_id, message.content)

    def stop(self) -> None:
        self.controller.stop()

    def regenerate(self) -> str | None:
        self.composer.cancel_edit()
        return self.controller.regenerate()

    def _on_transcript_regenerate_requested(self, message_id: str) -> None:
        last = self.controller.transcript.last()
        if last is not None and last.id == message_id:
            self.regenerate()

    def _on_stop_action_triggered(self) -> None:
        if self.controller.is_generating:
            self.controller.stop()
        elif self.transcript_view.is_replaying():
            self.transcript_view.stop_all_replays()
        elif self.composer.editing_message_id:
            self.composer.cancel_edit()

    def replay(self, message_id: str) -> bool:
        return self.transcript_view.start_replay(message_id, self.settings.replay_speed)

    def replay_last_reply(self) -> bool:
        last = self.controller.transcript.last(role="assistant")
        return last is not None and self.replay(last.id)

    def copy_last_reply(self) -> None:
        last = self.controller.transcript.last(role="assistant")
        if last is not None:
            self.transcript_view.copy_message(last.id)

    def _on_transcript_copied(self, text: str) -> None:
        self.statusBar().showMessage("Copied to the clipboard", 2000)

    def _on_transcript_replay_finished(self, message_id: str) -> None:
        self._update_regenerate()

    def _on_controller_reply_started(self, message_id: str) -> None:
        self.transcript_view.scroll_to_end()
        self._update_empty_state()

    def _on_controller_reply_finished(self, message_id: str, status: str) -> None:
        self.transcript_view.end_stream(message_id)
        self._update_regenerate()
        self.sidebar.refresh_search()

    def _on_controller_generating_changed(self, generating: bool) -> None:
        self.composer.set_generating(generating)
        self.stop_action.setEnabled(True)
        self._update_regenerate()

    def _on_controller_store_failed(self, text: str) -> None:
        self.banner.show_error("Your chats could not be saved.", text, offer_setup=False)

    def _update_regenerate(self) -> None:
        last = self.controller.transcript.last()
        can = last is not None and not self.controller.is_generating and last.role in ("assistant", "user")
        self.composer.set_can_regenerate(can)
        self.regenerate_action.setEnabled(can)

    def _update_empty_state(self, *_args) -> None:
        empty = len(self.controller.transcript) == 0
        if empty:
            choice = self._model_choice
            model = self._model_name or (choice.model if choice else None)
            name = Path(model).name if model else "no model yet"
            demo_note = ""
            info = self.client.model_info
            loaded_demo = info is not None and getattr(info, "is_demo", False)
            if (choice is not None and choice.is_demo and choice.model) or loaded_demo:
                name = "built-in demo model"
                why = f"<br>Why the demo: {html.escape(choice.reason)}" if choice is not None and choice.is_demo else ""
                demo_note = (
                    "<p><b>This is a tiny demo model.</b> It knows only toy skills (capitals, colours, "
                    f"simple sums, reversing and counting words) and shows how diffusion writes.{why}</p>"
                )
            if loaded_demo:
                links = " &nbsp;\u00b7&nbsp; ".join(
                    f"<a href='ask:{index}' style='color: {self.colors.link};'>{html.escape(prompt)}</a>"
                    for index, prompt in enumerate(DEMO_EXAMPLE_PROMPTS)
                )
                demo_note += f"<p>Try one:<br>{links}</p>"
            intro = ("<p>Ask anything. Each reply is written a block at a time:<br>"
                     "every block starts as noise and is denoised in place while you watch.</p>")
            server = self.remote.backend.server if getattr(self, "remote", None) and self.remote.backend else None
            if server is not None:  # a remote server answers (app/remote): no local model, no step animation
                name = f"{html.escape(server.model)} on {html.escape(server.host)}"
                intro, demo_note = f"<p>Ask anything. {html.escape(server.how_replies_arrive())}</p>", ""
            self.empty_label.setText(
                "<div style='font-size: 20px; font-weight: 600;'>Canvas Chat</div>"
                f"{intro}"
                f"{demo_note}"
                f"<p style='color: {self.colors.dim_text};'>Model: {name} \u00b7 Enter sends, Shift+Enter adds a line"
                " \u00b7 Ctrl+N new chat \u00b7 Ctrl+F search</p>"
            )
        self.empty_label.setVisible(empty)
        self.transcript_view.setVisible(not empty)

    def _on_empty_label_link_activated(self, link: str) -> None:
        if link.startswith("ask:"):
            self.send(DEMO_EXAMPLE_PROMPTS[int(link[4:])])

    def _focus_composer(self) -> None:
        self.composer.edit.setFocus(Qt.FocusReason.ShortcutFocusReason)

    # ------------------------------------------------------------------ settings, theme, model setup

    def open_settings(self) -> SettingsDialog:
        if self._settings_dialog is None:
            self._settings_dialog = SettingsDialog(self.settings, self, current=lambda: self.settings)
            self._settings_dialog.settings_accepted.connect(self._on_settings_dialog_settings_accepted)
            self._settings_dialog.finished.connect(self._on_settings_dialog_finished)
        self._settings_dialog.open()
        return self._settings_dialog

    def open_local_server(self) -> LocalServerDialog:
        self.local_server.show()
        self.local_server.raise_()
        return self.local_server

    def _on_settings_dialog_settings_accepted(self, settings: Settings) -> None:
        self.apply_settings(settings)

    def _on_settings_dialog_finished(self, _result: int) -> None:
        dialog, self._settings_dialog = self._settings_dialog, None
        if dialog is not None:
            dialog.deleteLater()

    def apply_settings(self, settings: Settings, save: bool = True) -> None:
        model_changed = settings.model != self.settings.model
        self.settings = settings
        self.controller.settings = settings
        self.transcript_view.set_reduced_motion(settings.reduced_motion)
        self.apply_theme()
        if save:
            try:
                save_settings(settings)
            except OSError as exc:
                self.banner.show_error("Your settings could not be saved.", str(exc), offer_setup=False)
        never_started = self.client.state == EngineState.STOPPED and self.client.model_info is None
        never_started = never_started and not settings.remote_enabled  # a server answers (app/remote)
        if save and (model_changed or never_started) and not self._closing:
            self.start_engine()

    def apply_theme(self) -> None:
        self.colors = resolve_theme(self.settings.theme)
        app = QApplication.instance()
        if app is not None:
            apply_theme(app, self.colors)
        self.transcript_view.set_colors(self.colors)
        self.banner.set_colors(self.colors)
        self.composer.setStyleSheet(
            f"#composer {{ border-top: 1px solid {self.colors.assistant_border}; }}"
            f"#composerEdit {{ border: 1px solid {self.colors.assistant_border}; border-radius: 8px; padding: 4px; "
            f"background: {self.colors.base}; }}"
        )
        self.sidebar.setStyleSheet(
            f"#sidebar {{ background: {self.colors.window}; border-right: 1px solid {self.colors.assistant_border}; }}"
            f"#conversationList {{ background: {self.colors.window}; }}"
            f"#conversationList::item {{ padding: 6px 4px; border-radius: 6px; color: {self.colors.text}; }}"
            f"#conversationList::item:selected {{ background: {self.colors.user_bubble}; color: {self.colors.user_text}; }}"
            f"#conversationList::item:hover:!selected {{ background: {self.colors.assistant_border}; }}"
        )
        self.transcript_view.setStyleSheet(f"#transcriptView {{ background: {self.colors.window}; }}")
        self._update_empty_state()

    def _on_style_hints_color_scheme_changed(self, _scheme) -> None:
        if self.settings.theme == "system":
            self.apply_theme()

    def open_model_setup(self) -> None:
        try:
            module = importlib.import_module("app.setup.dialog")
        except Exception as exc:  # a broken optional module must not take the window down
            log.error("Model setup is not available: %s", exc)
            self.model_setup_action.setEnabled(False)
            return
        opener = getattr(module, "open_model_setup", None)
        if callable(opener):
            self._model_setup_window = opener(self)
            return
        dialog_class = getattr(module, "ModelSetupDialog", None)
        if dialog_class is None:
            log.error("app.setup.dialog has neither open_model_setup nor ModelSetupDialog")
            self.model_setup_action.setEnabled(False)
            return
        self._model_setup_window = dialog_class(parent=self)
        self._model_setup_window.open()

    # ------------------------------------------------------------------ closing

    def closeEvent(self, event: QCloseEvent) -> None:
        self._closing = True
        self.transcript_view.stop_all_replays()
        setup = self._model_setup_window
        if setup is not None and hasattr(setup, "shutdown"):
            setup.shutdown()
        self.client.shutdown()
        super().closeEvent(event)
