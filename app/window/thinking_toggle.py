"""The "Think first" box in the composer: the open conversation's thinking toggle."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from PySide6.QtWidgets import QCheckBox


def attach_thinking_toggle(window) -> QCheckBox:
    """A "Think first" box in the composer, following the open conversation."""
    controller = window.controller
    toggle = QCheckBox("Think first", window.composer)
    toggle.setObjectName("thinkingToggle")
    toggle.setToolTip("The model reasons in its thought channel before answering (saved with this chat)")
    toggle.toggled.connect(controller.set_thinking)

    def follow(*_args) -> None:
        toggle.blockSignals(True)
        toggle.setChecked(controller.thinking)
        toggle.blockSignals(False)

    controller.conversation_opened.connect(follow)
    controller.chat_settings_changed.connect(follow)
    window.composer.add_option(toggle)
    return toggle
