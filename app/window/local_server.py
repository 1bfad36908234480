"""Settings ▸ Local server: turn the OpenAI-compatible server on and off, copy its URL, watch its requests.

The window lives as long as the main window, so its request log keeps filling while it is closed.
"""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import time
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

LOG_ROWS = 200  # the newest requests; older ones scroll away


@dataclass(frozen=True)
class LoggedRequest:
    """One row of the request log, as shown."""

    at: str
    request: str
    status: int
    tokens: int
    tokens_per_s: float

    @classmethod
    def of(cls, event) -> LoggedRequest:
        return cls(
            time.strftime("%H:%M:%S"),
            f"{event.method} {event.path}",
            event.status,
            event.completion_tokens,
            event.tokens_per_s,
        )

    def cells(self) -> list[str]:
        status = "client left" if self.status == 499 else str(self.status)
        speed = f"{self.tokens_per_s:.1f}" if self.tokens else ""
        return [self.at, self.request, status, str(self.tokens) if self.tokens else "", speed]


class LocalServerDialog(QDialog):
    """Emits `start_requested(port, token)` / `stop_requested()`; shows what the engine answered."""

    start_requested = Signal(int, str)
    stop_requested = Signal()

    def __init__(self, port: int, token: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("localServerDialog")
        self.setWindowTitle("Local server")
        self.base_url = ""
        self.requests: list[LoggedRequest] = []

        intro = QLabel(
            "Lets other apps on this PC (Continue, the OpenAI SDK, agent tools) use the loaded model "
            "through an OpenAI-compatible API. It listens on 127.0.0.1 only, and shares the model "
            "with this window: requests wait their turn.",
            self,
        )
        intro.setWordWrap(True)
        self.enabled = QCheckBox("Serve the loaded model", self)
        self.enabled.setObjectName("localServerEnabled")
        self.port = QSpinBox(self)
        self.port.setObjectName("localServerPort")
        self.port.setRange(1, 65535)
        self.port.setValue(port)
        self.token = QLineEdit(token, self)
        self.token.setObjectName("localServerToken")
        self.token.setEchoMode(QLineEdit.EchoMode.PasswordEchoOnEdit)
        self.token.setPlaceholderText("optional: clients must then send it as their API key")
        self.status = QLabel("Off", self)
        self.status.setObjectName("localServerStatus")
        self.status.setWordWrap(True)
        self.url_field = QLineEdit(self)
        self.url_field.setObjectName("localServerUrl")
        self.url_field.setReadOnly(True)
        self.url_field.setPlaceholderText("not serving")
        self.copy_button = QPushButton("Copy base URL", self)
        self.copy_button.setObjectName("localServerCopy")
        self.copy_button.setEnabled(False)
        url_row = QHBoxLayout()
        url_row.addWidget(self.url_field, 1)
        url_row.addWidget(self.copy_button)

        self.log_table = QTableWidget(0, 5, self)
        self.log_table.setObjectName("localServerLog")
        self.log_table.setHorizontalHeaderLabels(["Time", "Request", "Status", "Tokens", "Tokens/s"])
        self.log_table.verticalHeader().setVisible(False)
        self.log_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.log_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)

        form = QFormLayout()
        form.addRow(self.enabled)
        form.addRow("Port", self.port)
        form.addRow("Access token", self.token)
        form.addRow("Base URL", url_row)
        form.addRow("Status", self.status)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(QLabel("Requests", self))
        layout.addWidget(self.log_table, 1)
        self.resize(620, 460)

        self.enabled.toggled.connect(self._on_enabled_toggled)
        self.copy_button.clicked.connect(self._on_copy_button_clicked)

    # ------------------------------------------------------------------ what the engine said

    def show_started(self, base_url: str) -> None:
        self.base_url = base_url
        self.url_field.setText(base_url)
        self.copy_button.setEnabled(True)
        self._set_status(f"Serving at {base_url}", error=False)
        self._set_checked(True)

    def show_stopped(self) -> None:
        self.base_url = ""
        self.url_field.clear()
        self.copy_button.setEnabled(False)
        self._set_status("Off", error=False)
        self._set_checked(False)
        self._set_editable(True)

    def show_failed(self, message: str) -> None:
        self.show_stopped()
        self._set_status(message, error=True)

    def add_request(self, event) -> None:
        entry = LoggedRequest.of(event)
        self.requests.append(entry)
        del self.requests[:-LOG_ROWS]
        table = self.log_table
        table.insertRow(0)  # newest first
        for column, text in enumerate(entry.cells()):
            item = QTableWidgetItem(text)
            if column >= 2:
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(0, column, item)
        while table.rowCount() > LOG_ROWS:
            table.removeRow(table.rowCount() - 1)

    # ------------------------------------------------------------------ user actions

    def _on_enabled_toggled(self, checked: bool) -> None:
        if checked:
            self._set_status("Starting\u2026", error=False)
            self._set_editable(False)
            self.start_requested.emit(self.port.value(), self.token.text().strip())
        else:
            self.stop_requested.emit()
            self.show_stopped()

    def _on_copy_button_clicked(self) -> None:
        if self.base_url:
            QGuiApplication.clipboard().setText(self.base_url)
            self._set_status(f"Serving at {self.base_url} (copied)", error=False)

    def _set_checked(self, checked: bool) -> None:
        self.enabled.blockSignals(True)
        self.enabled.setChecked(checked)
        self.enabled.blockSignals(False)

    def _set_editable(self, editable: bool) -> None:
        self.port.setEnabled(editable)
        self.token.setEnabled(editable)

    def _set_status(self, text: str, error: bool) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #c0262d;" if error else "")


def attach_local_server(window) -> LocalServerDialog:
    """Builds the window's Local server dialog and wires it to the engine client and the settings."""
    import dataclasses

    client = window.client
    dialog = LocalServerDialog(window.settings.api_port, window.settings.api_token, window)

    def on_start_requested(port: int, token: str) -> None:
        if (port, token) != (window.settings.api_port, window.settings.api_token):
            window.apply_settings(dataclasses.replace(window.settings, api_port=port, api_token=token))
        client.start_api_server(port, token)

    dialog.start_requested.connect(on_start_requested)
    dialog.stop_requested.connect(client.stop_api_server)
    client.api_server_started.connect(lambda event: dialog.show_started(event.base_url))
    client.api_server_failed.connect(lambda error: dialog.show_failed(error.message))
    client.api_server_stopped.connect(lambda: None if client.api_server_wanted else dialog.show_stopped())
    client.api_request_logged.connect(dialog.add_request)
    return dialog
