"""A reply being rewritten in place: its document with the span drawn as noise and settling text
between the old text on both sides; and a selection in the shown (rendered) text mapped back to
the reply's Markdown source."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import difflib

from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor, QTextDocument

from app.chat.versions import RewriteInProgress
from app.theme import ThemeColors
from app.transcript.canvas_paint import NOISE_CELL, _display

# Stands in for the span in the Markdown source: a private-use character that Markdown leaves as
# text, so the rendered document keeps the old text's structure around it.
SPAN_MARK = "\ue000"


def source_with_mark(rewrite: RewriteInProgress) -> str:
    return rewrite.before + SPAN_MARK + rewrite.after


def draw_span_into(doc: QTextDocument, rewrite: RewriteInProgress, colors: ThemeColors) -> bool:
    """Replaces the mark in a rendered document with the span: settled pieces as text, the rest
    as noise cells, on a tinted background. False if the Markdown swallowed the mark."""
    cursor = doc.find(SPAN_MARK)
    if cursor.isNull():
        return False
    base = cursor.charFormat()
    background = QColor(colors.accent)
    background.setAlphaF(0.14)
    text_format = QTextCharFormat(base)
    text_format.setBackground(background)
    noise_format = QTextCharFormat(text_format)
    noise_format.setForeground(QColor(colors.noise_glyph))
    cursor.removeSelectedText()
    for text, settled in rewrite.segments():
        if settled:
            shown = _display(text)
            if shown:
                cursor.insertText(shown, text_format)
        else:
            cursor.insertText(NOISE_CELL, noise_format)
    cursor.setCharFormat(base)
    return True


def shown_span_text(rewrite: RewriteInProgress) -> str:
    """The span as drawn (settled pieces, a noise cell per unsettled position): for tests."""
    return "".join(_display(text) if settled else NOISE_CELL for text, settled in rewrite.segments())


# ---------------------------------------------------------------------------- selection -> source


def selection_in_document(doc: QTextDocument, start: int, end: int) -> tuple[str, str]:
    """The rendered plain text before a document selection, and the selected text."""
    cursor = QTextCursor(doc)
    cursor.setPosition(0)
    cursor.setPosition(start, QTextCursor.MoveMode.KeepAnchor)
    before = cursor.selection().toPlainText()
    cursor.setPosition(start)
    cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
    return before, cursor.selection().toPlainText()


def source_range(source: str, rendered_before: str, selected: str, rendered_after: str = "") -> tuple[int, int] | None:
    """Where text selected in the rendered reply lies in its Markdown source, as [start, end).

    The selection is found verbatim in the source when it can be (the same occurrence as in the
    rendered text); otherwise (Markdown syntax inside it) the two texts are aligned. None when
    nothing of the selection is in the source.
    """
    stripped = selected.strip()
    if not stripped:
        return None
    lead = len(selected) - len(selected.lstrip())
    rendered_start = len(rendered_before) + lead
    rendered_full = rendered_before + selected + rendered_after
    occurrences = _occurrences(source, stripped)
    if occurrences:
        earlier = sum(1 for at in _occurrences(rendered_full, stripped) if at < rendered_start)
        at = occurrences[min(earlier, len(occurrences) - 1)]
        return at, at + len(stripped)
    matcher = difflib.SequenceMatcher(None, rendered_full, source, autojunk=False)
    blocks = [block for block in matcher.get_matching_blocks() if block.size]
    rendered_end = rendered_start + len(stripped)
    start = next((b.b + max(0, rendered_start - b.a) for b in blocks if b.a + b.size > rendered_start), None)
    end = next((b.b + min(b.size, rendered_end - b.a) for b in reversed(blocks) if b.a < rendered_end), None)
    if start is None or end is None or end <= start:
        return None
    return start, end


def _occurrences(text: str, part: str) -> list[int]:
    found, at = [], text.find(part)
    while at >= 0:
        found.append(at)
        at = text.find(part, at + 1)
    return found
