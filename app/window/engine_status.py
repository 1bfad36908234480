"""The engine's state in the window: the status line (dot, words, load progress, model) and the
banner that shows a crash (the worker's last log lines, Restart) or a load error (Model setup)."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from PySide6.QtCore import Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.theme import ThemeColors
from app.worker.engine_state import EngineState

CRASH_LOG_LINES = 12

STATE_TEXT = {
    EngineState.STOPPED: "Engine stopped",
    EngineState.STARTING: "Starting the engine\u2026",
    EngineState.LOADING: "Loading the model\u2026",
    EngineState.READY: "Ready",
    EngineState.GENERATING: "Generating\u2026",
    EngineState.CRASHED: "Engine crashed",
    EngineState.RESTARTING: "Restarting the engine\u2026",
}
STATE_DOT = {
    EngineState.STOPPED: "#8a8f98",
    EngineState.STARTING: "#d29b22",
    EngineState.LOADING: "#d29b22",
    EngineState.READY: "#2fa55a",
    EngineState.GENERATING: "#2f6fde",
    EngineState.CRASHED: "#d0363d",
    EngineState.RESTARTING: "#d29b22",
}
NO_MODEL_TEXT = "No model loaded"


class EngineStatus(QWidget):
    """Always-visible engine state: a coloured dot, words, a progress bar while loading, the model."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("engineStatus")
        self.dot = QLabel("\u25cf", self)
        self.dot.setObjectName("engineStateDot")
        self.label = QLabel(STATE_TEXT[EngineState.STOPPED], self)
        self.label.setObjectName("engineStateLabel")
        self.progress = QProgressBar(self)
        self.progress.setObjectName("loadProgress")
        self.progress.setRange(0, 100)
        self.progress.setFixedWidth(160)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.model_label = QLabel("", self)
        self.model_label.setObjectName("modelLabel")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 0, 6, 0)
        layout.setSpacing(6)
        layout.addWidget(self.dot)
        layout.addWidget(self.label)
        layout.addWidget(self.progress)
        layout.addSpacing(12)
        layout.addWidget(self.model_label)
        layout.addStretch(1)
        self.state = EngineState.STOPPED

    def show_state(self, state: EngineState, detail: str = "") -> None:
        self.state = state
        self.dot.setStyleSheet(f"color: {STATE_DOT[state]};")
        self.label.setText(STATE_TEXT[state] + (f"  {detail}" if detail else ""))
        self.progress.setVisible(state == EngineState.LOADING)
        if state != EngineState.LOADING:
            self.progress.setValue(0)

    def show_no_model(self) -> None:
        """The worker is up but holds no model (its last load failed)."""
        self.dot.setStyleSheet(f"color: {STATE_DOT[EngineState.STOPPED]};")
        self.label.setText(NO_MODEL_TEXT)
        self.model_label.setText("")

    def show_progress(self, fraction: float, message: str) -> None:
        # Also mid-reply: the first image of a 4-bit load brings the vision tower in (until the next state).
        self.progress.setVisible(True)
        self.progress.setValue(int(max(0.0, min(1.0, fraction)) * 100))
        self.label.setText(STATE_TEXT[EngineState.LOADING] + (f"  {message}" if message else ""))


class EngineBanner(QFrame):
    """The worker crashed (its last log lines and Restart) or a model could not be loaded."""

    sig_restart_requested = Signal()
    sig_model_setup_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("crashBanner")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel(self)
        self.title.setObjectName("crashBannerTitle")
        self.title.setWordWrap(True)
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.detail = QLabel(self)
        self.detail.setWordWrap(True)
        self.log_view = QPlainTextEdit(self)
        self.log_view.setObjectName("crashLog")
        self.log_view.setReadOnly(True)
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.restart_button = QPushButton("Restart the engine", self)
        self.restart_button.setObjectName("restartButton")
        self.restart_button.clicked.connect(self.sig_restart_requested)
        self.setup_button = QPushButton("Model setup\u2026", self)
        self.setup_button.clicked.connect(self.sig_model_setup_requested)
        self.dismiss_button = QPushButton("Dismiss", self)
        self.dismiss_button.clicked.connect(self.hide)
        buttons = QHBoxLayout()
        buttons.addWidget(self.restart_button)
        buttons.addWidget(self.setup_button)
        buttons.addStretch(1)
        buttons.addWidget(self.dismiss_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.addWidget(self.title)
        layout.addWidget(self.detail)
        layout.addWidget(self.log_view)
        layout.addLayout(buttons)
        self.kind = ""
        self.hide()

    def set_colors(self, colors: ThemeColors) -> None:
        self.setStyleSheet(
            f"#crashBanner {{ background: {colors.banner_background}; border: 1px solid {colors.mark_error}; "
            f"border-radius: 6px; }} #crashBanner QLabel {{ color: {colors.banner_text}; }}"
        )

    def show_crash(self, exit_code: int, log_lines: list[str], restarting: bool, how: str = "") -> None:
        self.kind = "crash"
        how = how or (f"exited with status {exit_code}" if exit_code >= 0 else "killed")
        self.title.setText(f"The engine stopped unexpectedly ({how}).")
        self.detail.setText(
            "The reply in progress was kept and marked interrupted. "
            + ("Restarting automatically\u2026" if restarting else "Press Restart to try again.")
        )
        lines = [line for line in log_lines if line.strip()][-CRASH_LOG_LINES:]
        self.log_view.setPlainText("\n".join(lines) or "(the worker wrote no log lines)")
        spacing = self.log_view.fontMetrics().lineSpacing()
        self.log_view.setFixedHeight(min(CRASH_LOG_LINES, max(2, len(lines))) * spacing + 12)
        self.log_view.show()
        self.setup_button.hide()
        self.show()

    def show_error(self, title: str, detail: str, offer_setup: bool) -> None:
        self.kind = "error"
        self.title.setText(title)
        self.detail.setText(detail)
        self.log_view.hide()
        self.setup_button.setVisible(offer_setup)
        self.show()


