"""The thinking toggle of a conversation, and its thought channel shown collapsed above the answer.

Only text is built here (markdown with a `thought:` link that expands or collapses it); the
transcript view draws it like any reply and calls back when the link is clicked.
"""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from typing import Any

from PySide6.QtWidgets import QCheckBox

THOUGHT_SCHEME = "thought"
THOUGHT_LINK = THOUGHT_SCHEME + ":toggle"


def reasoning_of(message: Any) -> str:
    """The thought channel of a finished reply ("" when it did not think)."""
    if getattr(message, "role", "") != "assistant" or not message.stats:
        return ""
    reasoning = message.stats.get("reasoning")
    return reasoning if isinstance(reasoning, str) else ""


def with_thought(answer: str, reasoning: str, expanded: bool) -> str:
    """Markdown of a reply: a one-line collapsed thought (or the whole of it) above the answer."""
    if not reasoning.strip():
        return answer
    words = len(reasoning.split())
    if not expanded:
        return f"[\u25b8 Thought ({words} words)]({THOUGHT_LINK})\n\n{answer}"
    quoted = "\n".join("> " + line if line.strip() else ">" for line in reasoning.strip().splitlines())
    return f"[\u25be Thought]({THOUGHT_LINK})\n\n{quoted}\n\n{answer}"


def attach_thinking_toggle(window) -> QCheckBox:
    """A "Think first" box in the composer, following the open conversation."""
    controller = window.controller
    toggle = QCheckBox("Think first", window.composer)
    toggle.setObjectName("thinkingToggle")
    toggle.setToolTip("The model reasons in its thought channel before answering (this chat only)")
    toggle.toggled.connect(controller.set_thinking)

    def follow(_conversation_id: str) -> None:
        toggle.blockSignals(True)
        toggle.setChecked(controller.thinking)
        toggle.blockSignals(False)

    controller.conversation_opened.connect(follow)
    window.composer.add_option(toggle)
    return toggle
