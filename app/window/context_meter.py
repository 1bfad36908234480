"""The context meter: how much of the model's window the open chat fills (measured by the engine
at the last reply), and a warning before the message being typed would overflow it."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import math
from typing import Iterable

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QWidget

# A plain estimate for text not yet tokenized: about four characters a token for English, plus
# the few tokens of the turn's markers. The meter says so wherever it uses it.
CHARS_PER_TOKEN = 4
TURN_MARKER_TOKENS = 4
NEAR_FULL = 0.8


def estimate_tokens(text: str) -> int:
    """An estimate of the tokens a new user message takes (0 for empty text)."""
    text = text.strip()
    return math.ceil(len(text) / CHARS_PER_TOKEN) + TURN_MARKER_TOKENS if text else 0


def tokens_used(messages: Iterable) -> int:
    """The chat's tokens as the engine counted them at its last reply: that reply's prompt plus
    the tokens it wrote (0 when no reply has stats yet)."""
    for message in reversed(list(messages)):
        stats = message.stats if message.role == "assistant" else None
        if stats and isinstance(stats.get("prompt_tokens"), int):
            return int(stats["prompt_tokens"]) + int(stats.get("new_tokens") or 0)
    return 0


def reply_room(max_new_tokens: int, canvas_length: int) -> int:
    """The room the engine keeps for a reply: the reply length in whole canvases
    (engine.generation.check_context_length refuses a prompt that leaves less)."""
    canvas = max(1, canvas_length)
    return math.ceil(max_new_tokens / canvas) * canvas


def overflow_warning(used: int, estimate: int, window: int, reply_room: int) -> str:
    """What to tell the user before sending, or "" when the message fits."""
    if window <= 0 or estimate <= 0 or used + estimate + reply_room <= window:
        return ""
    return (
        f"\u26a0 This message would overflow the model's context: the chat uses {used:,} of {window:,} tokens, "
        f"the message is about {estimate:,} tokens (an estimate, about {CHARS_PER_TOKEN} characters a token), "
        f"and the reply may add up to {reply_room:,} (this chat's reply length, in whole canvases). "
        "Start a new chat, shorten the message, or lower the reply length in the chat's settings."
    )


class ContextMeter(QWidget):
    """"Context 1,234 / 4,096" with a bar; `update_usage` and `update_draft` drive it."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("contextMeter")
        self.label = QLabel(self)
        self.label.setObjectName("contextMeterLabel")
        self.bar = QProgressBar(self)
        self.bar.setObjectName("contextMeterBar")
        self.bar.setTextVisible(False)
        self.bar.setFixedWidth(70)
        self.bar.setFixedHeight(8)
        self.bar.setAccessibleName("Context used")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 8, 0)
        layout.setSpacing(6)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        self.warning = QLabel(self)  # placed by the window (above the composer's input)
        self.warning.setObjectName("contextWarning")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #b45309;")
        self.warning.setAccessibleName("Context warning")
        self.warning.hide()
        self.used = 0
        self.window_tokens = 0
        self.reply_room = 0
        self.update_usage(0, 0, 0)

    def update_usage(self, used: int, window: int, reply_room: int) -> None:
        self.used, self.window_tokens, self.reply_room = used, window, reply_room
        if window > 0:
            self.label.setText(f"Context {used:,} / {window:,}")
            self.bar.setRange(0, window)
            self.bar.setValue(min(used, window))
            share = used / window
            self.setToolTip(
                f"This chat fills {used:,} of the model's {window:,} tokens ({share:.0%}), "
                "as the engine counted them at the last reply"
            )
        else:
            self.label.setText(f"Context {used:,} / ?")
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
            self.setToolTip("The model's context window is known once a model is loaded")
        self.bar.setVisible(window > 0)
        near = window > 0 and used >= NEAR_FULL * window
        self.label.setStyleSheet("color: #b45309; font-weight: 600;" if near else "")
        description = self.toolTip()
        self.setAccessibleName(self.label.text())
        self.setAccessibleDescription(description)
        self.bar.setAccessibleDescription(description)

    def update_draft(self, text: str) -> str:
        """Checks the message being typed; returns (and shows) the warning, "" when it fits."""
        warning = overflow_warning(self.used, estimate_tokens(text), self.window_tokens, self.reply_room)
        self.warning.setText(warning)
        self.warning.setAccessibleDescription(warning)
        self.warning.setVisible(bool(warning))
        return warning


def attach_context_meter(window) -> ContextMeter:
    """The meter on the right of the status bar, its warning above the input; follows the open chat."""
    meter = ContextMeter(window.composer)
    controller, client = window.controller, window.client

    def refresh(*_args) -> None:
        local = controller.backend is client
        info = client.model_info if local else None  # a server's window is not known here
        context_window = getattr(info, "context_window", 0) if info is not None else 0
        canvas = getattr(info, "canvas_length", 0) if info is not None else 0
        room = reply_room(controller.chat_settings.max_new_tokens, canvas)
        meter.update_usage(tokens_used(controller.transcript), context_window, room)
        meter.update_draft(window.composer.text())

    controller.conversation_opened.connect(refresh)
    controller.reply_finished.connect(refresh)
    controller.chat_settings_changed.connect(refresh)
    client.model_loaded.connect(refresh)
    controller.backend_changed.connect(refresh)
    window.composer.edit.textChanged.connect(lambda: meter.update_draft(window.composer.text()))
    status_bar = window.statusBar() if hasattr(window, "statusBar") else None
    if status_bar is not None:
        status_bar.addPermanentWidget(meter)
    window.composer.layout().insertWidget(0, meter.warning)
    refresh()
    return meter
