"""The setup screen's row about partial downloads that interrupted downloads left in the Hugging Face
cache: how many and how big, and a button that deletes the ones no running download owns."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMessageBox, QPushButton, QWidget

from app.setup.download_events import format_bytes
from engine.hub_cache import find_partial_downloads, remove_partial_downloads


class PartialDownloadsRow(QWidget):
    """Hidden while there is nothing to clean; `cleaned(message, failed)` after a clean-up."""

    cleaned = Signal(str, bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel("", self)
        self.label.setObjectName("partialDownloadsLabel")
        self.label.setWordWrap(True)
        self.clean_button = QPushButton("Clean up\u2026", self)
        self.clean_button.setObjectName("cleanPartialsButton")
        self.clean_button.clicked.connect(self._on_clean_button_clicked)
        row.addWidget(self.label, 1)
        row.addWidget(self.clean_button)

    def refresh(self, busy: bool) -> None:
        """Counts the partial files again; the button waits while a download runs (`busy`)."""
        partials = find_partial_downloads()
        total = sum(partial.size for partial in partials)
        self.label.setText(
            f"{len(partials)} partial download{'' if len(partials) == 1 else 's'}, {format_bytes(total)}, "
            "left in the Hugging Face cache by interrupted downloads."
        )
        self.label.setVisible(bool(partials))
        self.clean_button.setVisible(bool(partials))
        self.clean_button.setEnabled(not busy)

    def _on_clean_button_clicked(self) -> None:
        partials = find_partial_downloads()
        if not partials:
            self.cleaned.emit("", False)
            return
        total = format_bytes(sum(partial.size for partial in partials))
        answer = QMessageBox.question(
            self,
            "Clean up partial downloads",
            f"Delete {len(partials)} partial download file{'' if len(partials) == 1 else 's'} ({total})? "
            "A paused download of them starts over. Downloads in progress are not touched.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        cleanup = remove_partial_downloads()
        message = (
            f"Removed {cleanup.removed} partial download file{'' if cleanup.removed == 1 else 's'}, "
            f"freeing {format_bytes(cleanup.freed_bytes)}."
        )
        if cleanup.failed:
            message += " Could not remove: " + "; ".join(cleanup.failed[:3])
        self.cleaned.emit(message, bool(cleanup.failed))
