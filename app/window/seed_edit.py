"""A seed field: empty means a fresh random seed per reply (the range is checked with the other
settings, against engine.protocol.SETTING_RANGES)."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from PySide6.QtCore import QRegularExpression
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import QLineEdit, QWidget


class SeedEdit(QLineEdit):
    """Digits only (a seed up to 2**64 - 1 does not fit a QSpinBox); empty = random."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setPlaceholderText("random")
        self.setValidator(QRegularExpressionValidator(QRegularExpression(r"\d{0,20}"), self))
        self.setClearButtonEnabled(True)
        self.setToolTip("The same seed and settings give the same reply; leave empty for a new one each time")

    def seed(self) -> int | None:
        text = self.text().strip()
        return int(text) if text else None

    def set_seed(self, seed: int | None) -> None:
        self.setText("" if seed is None else str(seed))
