"""The window's link to a remote server: Model ▸ Connect to a server…, switching the controller
between the local worker and a `RemoteBackend`, and the status bar's "remote" and "answered by"."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import dataclasses
import logging
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QLabel, QMenu

from app.window.attachment_strip import attach_state
from app.remote.backend import RemoteBackend
from app.remote.connect_dialog import ConnectDialog
from app.remote.server import RemoteServer, load_api_key, save_api_key
from app.settings import save_settings
from app.worker.engine_state import EngineState

if TYPE_CHECKING:
    from app.window.main_window import MainWindow

log = logging.getLogger("canvas_chat.remote")


class RemoteConnection(QObject):
    """Owns the `RemoteBackend` in use (None: the local worker answers) and its window parts."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.backend: RemoteBackend | None = None
        self.dialog: ConnectDialog | None = None
        self.connect_action = QAction("&Connect to a server\u2026", window)
        self.connect_action.setObjectName("connectServerAction")
        self.connect_action.triggered.connect(self.open_dialog)
        window.addAction(self.connect_action)
        menu = window.findChild(QMenu, "modelMenu")
        if menu is not None:
            menu.insertAction(menu.actions()[0] if menu.actions() else None, self.connect_action)
        self.backend_label = QLabel("", window)
        self.backend_label.setObjectName("remoteBackendLabel")
        self.backend_label.hide()
        self.answered_label = QLabel("", window)
        self.answered_label.setObjectName("answeredByLabel")
        window.statusBar().addPermanentWidget(self.backend_label)
        window.statusBar().addPermanentWidget(self.answered_label)
        controller = window.controller
        controller.reply_started.connect(self._on_controller_reply_changed)
        controller.reply_finished.connect(self._on_controller_reply_changed)
        controller.conversation_opened.connect(self._on_controller_reply_changed)
        window.transcript_view.sig_retry_requested.connect(self._on_transcript_retry_requested)
        window.installEventFilter(self)
        settings = window.settings
        if settings.remote_enabled and settings.remote_url and settings.remote_model:
            self.use_server(RemoteServer(
                settings.remote_url, settings.remote_model, load_api_key(settings.remote_url),
                settings.remote_diffusiongemma,
            ), save=False)
        self.show_answered_by()

    # ------------------------------------------------------------------ switching

    def open_dialog(self) -> ConnectDialog:
        if self.dialog is None:
            settings = self.window.settings
            server = self.backend.server if self.backend is not None else None
            url = server.base_url if server else settings.remote_url
            key = server.api_key if server else (load_api_key(url) if url else "")
            self.dialog = ConnectDialog(url, key, server.model if server else settings.remote_model,
                                        connected=self.backend is not None, parent=self.window)
            self.dialog.server_chosen.connect(self.use_server)
            self.dialog.local_chosen.connect(self.use_local)
            self.dialog.finished.connect(self._on_dialog_finished)
        self.dialog.show()
        self.dialog.raise_()
        return self.dialog

    def _on_dialog_finished(self, _result: int) -> None:
        dialog, self.dialog = self.dialog, None
        if dialog is None:
            return
        if dialog.probe_running():
            # The probe thread still reports to it (a server that takes its time to answer).
            dialog.probe_finished.connect(dialog.deleteLater)
        else:
            dialog.deleteLater()

    def use_server(self, server: RemoteServer, save: bool = True) -> bool:
        """Replies come from `server` from the next one on (False while a reply is generating)."""
        backend = RemoteBackend(server, self)
        if not self.window.controller.use_backend(backend):
            backend.deleteLater()
            self.window.statusBar().showMessage("Stop the reply in progress before switching servers.", 5000)
            return False
        self._drop_backend()
        self.backend = backend
        if save:
            note = save_api_key(server.base_url, server.api_key)
            if note:
                self.window.statusBar().showMessage(note, 15000)
            self._save(remote_enabled=True, remote_url=server.base_url, remote_model=server.model,
                       remote_diffusiongemma=server.diffusiongemma)
        how = ("canvas by canvas, no per-step drafts" if server.diffusiongemma
               else "plain text, not a DiffusionGemma model")
        self.backend_label.setText(f"\u25cf Remote: {server.model} at {server.host} \u00b7 {how}")
        self.backend_label.setToolTip(
            "Replies come from this server. It sends each committed canvas, not the denoising steps, "
            "so a reply appears a canvas at a time." if server.diffusiongemma else
            "Replies come from this server as plain text; there is no canvas animation.")
        self.backend_label.setStyleSheet("color: #2f6fde;")
        self.backend_label.show()
        self.window.engine_status.hide()  # the local worker's state says nothing about these replies
        self.window.composer.attach_button.set_model_accepts_images(*attach_state(None, remote=True))
        self.window._update_empty_state()
        return True

    def use_local(self) -> bool:
        if not self.window.controller.use_backend(self.window.client):
            return False
        self._drop_backend()
        self.backend_label.hide()
        self.window.engine_status.show()
        self.window.composer.attach_button.set_model_accepts_images(*attach_state(self.window.client.model_info))
        self.window._update_empty_state()
        self._save(remote_enabled=False)
        if self.window.client.state == EngineState.STOPPED and self.window.client.model_info is None:
            self.window.start_engine()  # the app started on the server: load this PC's model now
        return True

    def _drop_backend(self) -> None:
        if self.backend is not None:
            self.backend.shutdown()
            self.backend.deleteLater()
            self.backend = None

    def _save(self, **values) -> None:
        settings = dataclasses.replace(self.window.settings, **values)
        self.window.settings = settings
        self.window.controller.settings = settings
        try:
            save_settings(settings)
        except OSError as exc:
            self.window.banner.show_error("Your settings could not be saved.", str(exc), offer_setup=False)

    # ------------------------------------------------------------------ the status bar, retry

    def show_answered_by(self) -> None:
        """The open chat's last reply: which backend and model wrote it."""
        last = self.window.controller.transcript.last(role="assistant")
        who = last.answered_by if last is not None else ""
        self.answered_label.setText(f"Last reply: {who}" if who else "")
        self.answered_label.setVisible(bool(who))

    def _on_controller_reply_changed(self, *_args) -> None:
        self.show_answered_by()

    def _on_transcript_retry_requested(self, message_id: str) -> None:
        last = self.window.controller.transcript.last()
        if last is not None and last.id == message_id:
            self.window.regenerate()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.window and event.type() == QEvent.Type.Close:
            if self.backend is not None:
                self.backend.shutdown()
        return False


def attach_remote_connection(window: MainWindow) -> RemoteConnection:
    return RemoteConnection(window)
