"""A reply's thought channel, shown collapsed above the answer.

Only text is built here (markdown with a `thought:` link that expands or collapses it); the
transcript view draws it like any reply and calls back when the link is clicked. The toggle that
asks for thinking is the window's (`app.window.thinking_toggle`).
"""

from __future__ import annotations

from typing import Any

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
