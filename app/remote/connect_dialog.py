"""Model ▸ Connect to a server…: the server's address, an optional API key, "Test connection" with
a plain verdict, and the model picked from the server's `GET /v1/models`."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import threading

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.remote.server import (
    NO_KEYRING_NOTE,
    ProbeVerdict,
    RemoteModel,
    RemoteServer,
    model_note,
    normalized_base_url,
    probe,
)


def keyring_available() -> bool:
    import keyring
    from keyring.backends import fail

    try:
        return not isinstance(keyring.get_keyring(), fail.Keyring)
    except Exception:  # noqa: BLE001  (a broken keyring configuration counts as none)
        return False


class ConnectDialog(QDialog):
    """Emits `server_chosen(RemoteServer)` on Connect, `local_chosen()` on "Use this PC's engine"."""

    server_chosen = Signal(object)
    local_chosen = Signal()
    probe_finished = Signal(object)  # ProbeVerdict (from the probe thread; queued to the GUI thread)

    def __init__(self, base_url: str = "", api_key: str = "", model: str = "", connected: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("connectDialog")
        self.setWindowTitle("Connect to a server")
        self.setMinimumWidth(560)
        self._wanted_model = model
        self._models: tuple[RemoteModel, ...] = ()
        self._probe_thread: threading.Thread | None = None

        intro = QLabel(
            "Chat with a model served elsewhere: vLLM on a GPU server, Canvas Chat's own server on "
            "another PC, or any OpenAI-compatible server.", self)
        intro.setWordWrap(True)
        self.url_edit = QLineEdit(base_url, self)
        self.url_edit.setObjectName("serverUrlEdit")
        self.url_edit.setPlaceholderText("http://gpu-box:8000/v1")
        self.key_edit = QLineEdit(api_key, self)
        self.key_edit.setObjectName("apiKeyEdit")
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setPlaceholderText("optional (vLLM --api-key, Canvas Chat --token)")
        self.keyring_note = QLabel(
            "The key is kept in your system keyring." if keyring_available() else NO_KEYRING_NOTE, self)
        self.keyring_note.setObjectName("keyringNote")
        self.keyring_note.setWordWrap(True)
        self.test_button = QPushButton("Test connection", self)
        self.test_button.setObjectName("testConnectionButton")
        self.test_button.clicked.connect(self.test_connection)
        self.verdict_label = QLabel("", self)
        self.verdict_label.setObjectName("verdictLabel")
        self.verdict_label.setWordWrap(True)
        self.model_combo = QComboBox(self)
        self.model_combo.setObjectName("modelCombo")
        self.model_combo.setEnabled(False)
        self.model_combo.currentIndexChanged.connect(self._on_model_combo_changed)
        self.model_note = QLabel("", self)
        self.model_note.setObjectName("modelNote")
        self.model_note.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Server address:", self.url_edit)
        form.addRow("API key:", self.key_edit)
        form.addRow("", self.keyring_note)
        test_row = QHBoxLayout()
        test_row.addWidget(self.test_button)
        test_row.addWidget(self.verdict_label, 1)
        form.addRow("", test_row)
        form.addRow("Model:", self.model_combo)
        form.addRow("", self.model_note)

        self.connect_button = QPushButton("Connect", self)
        self.connect_button.setObjectName("connectButton")
        self.connect_button.setEnabled(False)
        self.connect_button.setDefault(True)
        self.connect_button.clicked.connect(self._on_connect_button_clicked)
        self.local_button = QPushButton("Use this PC's engine", self)
        self.local_button.setObjectName("useLocalButton")
        self.local_button.setEnabled(connected)
        self.local_button.clicked.connect(self._on_local_button_clicked)
        cancel = QPushButton("Cancel", self)
        cancel.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.local_button)
        buttons.addStretch(1)
        buttons.addWidget(cancel)
        buttons.addWidget(self.connect_button)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addLayout(buttons)
        self.probe_finished.connect(self._on_probe_finished)
        self.url_edit.textEdited.connect(self._on_server_edited)
        self.key_edit.textEdited.connect(self._on_server_edited)

    # ------------------------------------------------------------------ test connection

    def test_connection(self) -> None:
        """Probes the server off the GUI thread; the verdict and model list follow."""
        if self.probe_running():
            return
        url, key = self.url_edit.text(), self.key_edit.text()
        self.test_button.setEnabled(False)
        self.verdict_label.setText("Testing\u2026")
        self._probe_thread = threading.Thread(
            target=lambda: self.probe_finished.emit(probe(url, key)), name="remote-probe", daemon=True
        )
        self._probe_thread.start()

    def probe_running(self) -> bool:
        return self._probe_thread is not None and self._probe_thread.is_alive()

    def _on_probe_finished(self, verdict: ProbeVerdict) -> None:
        self.test_button.setEnabled(True)
        self.verdict_label.setText(("\u2714 " if verdict.ok else "\u2716 ") + verdict.text)
        self._models = verdict.models
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for model in verdict.models:
            self.model_combo.addItem(model.id)
        wanted = self.model_combo.findText(self._wanted_model)
        self.model_combo.setCurrentIndex(max(0, wanted) if verdict.models else -1)
        self.model_combo.blockSignals(False)
        self.model_combo.setEnabled(bool(verdict.models))
        self._on_model_combo_changed()

    def _on_server_edited(self, _text: str) -> None:
        # Another server (or key): its model list must be fetched again before connecting.
        self._models = ()
        self.model_combo.clear()
        self.model_combo.setEnabled(False)
        self.connect_button.setEnabled(False)
        self.verdict_label.setText("")
        self.model_note.setText("")

    def selected_model(self) -> RemoteModel | None:
        index = self.model_combo.currentIndex()
        return self._models[index] if 0 <= index < len(self._models) else None

    def _on_model_combo_changed(self, *_args) -> None:
        model = self.selected_model()
        self.model_note.setText(model_note(model))
        self.connect_button.setEnabled(model is not None)

    # ------------------------------------------------------------------ choosing

    def _on_connect_button_clicked(self) -> None:
        model = self.selected_model()
        if model is None:
            return
        server = RemoteServer(
            base_url=normalized_base_url(self.url_edit.text()),
            model=model.id,
            api_key=self.key_edit.text().strip(),
            diffusiongemma=model.is_diffusiongemma,
        )
        self.server_chosen.emit(server)
        self.accept()

    def _on_local_button_clicked(self) -> None:
        self.local_chosen.emit()
        self.accept()
