"""Help ▸ About: the app's version, Python, PySide6/Qt, the worker's torch and transformers (as the
worker reports them: the GUI never imports torch), and the log folder with a button to open it."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import html
import importlib.metadata
import platform
from pathlib import Path

import PySide6
from PySide6.QtCore import Qt, QUrl, qVersion
from PySide6.QtGui import QAction, QDesktopServices
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QMenu, QPushButton, QVBoxLayout, QWidget

from engine import paths

NOT_LOADED = "not loaded"


def app_version() -> str:
    try:
        return importlib.metadata.version("canvas-chat")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def about_facts(model_info) -> dict[str, str]:
    """What the About box lists, in order (model_info: the worker's ModelLoaded, or None)."""
    torch_version = getattr(model_info, "torch_version", "") if model_info is not None else ""
    transformers_version = getattr(model_info, "transformers_version", "") if model_info is not None else ""
    return {
        "Canvas Chat": app_version(),
        "Python": platform.python_version(),
        "PySide6": PySide6.__version__,
        "Qt": qVersion(),
        "torch (in the engine)": torch_version or NOT_LOADED,
        "transformers (in the engine)": transformers_version or NOT_LOADED,
        "Log folder": str(paths.log_dir()),
    }


class AboutDialog(QDialog):
    def __init__(self, model_info, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("aboutDialog")
        self.setWindowTitle("About Canvas Chat")
        self.facts = about_facts(model_info)
        rows = "".join(
            f"<tr><td style='padding-right: 12px;'><b>{html.escape(name)}</b></td><td>{html.escape(value)}</td></tr>"
            for name, value in self.facts.items()
        )
        self.text = QLabel(
            "<p style='font-size: 16px;'><b>Canvas Chat</b></p>"
            "<p>Private, local chat with DiffusionGemma.</p>"
            f"<table>{rows}</table>",
            self,
        )
        self.text.setObjectName("aboutText")
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.setAccessibleName("About Canvas Chat")
        self.text.setAccessibleDescription("; ".join(f"{name}: {value}" for name, value in self.facts.items()))
        self.open_logs_button = QPushButton("Open the log folder", self)
        self.open_logs_button.setObjectName("openLogFolderButton")
        self.open_logs_button.setToolTip(self.facts["Log folder"])
        self.open_logs_button.clicked.connect(self.open_log_folder)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addWidget(self.open_logs_button)
        layout.addWidget(buttons)

    def open_log_folder(self) -> bool:
        folder = Path(self.facts["Log folder"])
        folder.mkdir(parents=True, exist_ok=True)
        return QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))


def attach_about(window) -> QAction:
    """Help ▸ About Canvas Chat (the Help menu is made if no one made it yet)."""
    bar = window.menuBar()
    help_menu = next(
        (a.menu() for a in bar.actions() if a.menu() is not None and a.menu().objectName() == "helpMenu"), None
    )
    if help_menu is None:
        help_menu = QMenu("&Help", bar)
        help_menu.setObjectName("helpMenu")
        bar.addMenu(help_menu)
    action = QAction("&About Canvas Chat", window)
    action.setObjectName("aboutAction")

    def open_about() -> AboutDialog:
        dialog = AboutDialog(window.client.model_info, window)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        window.about_dialog = dialog
        return dialog

    action.triggered.connect(open_about)
    window.addAction(action)
    help_menu.addAction(action)
    window.open_about = open_about
    return action
