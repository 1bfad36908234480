"""The open canvas drawn from Draft events: neutral glyphs for noise, settled tokens fading in.

`CanvasAnimation` keeps per-position settle times (for the fade) from one draft to the next;
`layout_canvas` turns it into a QTextLayout with one colour per run of equal-looking positions.
"""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import re
import time
from dataclasses import dataclass
from typing import Sequence

from PySide6.QtCore import QPointF
from PySide6.QtGui import QColor, QFont, QTextCharFormat, QTextLayout, QTextOption

from app.theme import ThemeColors

NOISE_GLYPH = "\u2591"  # light shade block: one per position that is still noise
# A zero-width space after each noise glyph lets a long run of them wrap like words.
NOISE_CELL = NOISE_GLYPH + "\u200b"
FADE_S = 0.28
# Alpha levels a fading token steps through; runs of equal alpha share one format range.
FADE_LEVELS = 6


@dataclass(frozen=True)
class CanvasSegment:
    """What is drawn for one canvas position."""

    text: str
    settled: bool
    entropy: int


class CanvasAnimation:
    """The open canvas of one streaming (or replaying) reply, with fade-in timing."""

    def __init__(self) -> None:
        self.canvas_index = -1
        self.step_index = 0
        self.max_steps = 0
        self.pieces: tuple[str, ...] = ()
        self.shown: tuple[str, ...] = ()  # what each position draws (piece text or a noise cell)
        self.settled: tuple[bool, ...] = ()
        self.entropy: tuple[int, ...] = ()
        self._settled_at: list[float] = []
        self.drafts_applied = 0

    @property
    def has_draft(self) -> bool:
        return self.canvas_index >= 0

    def apply(
        self,
        canvas_index: int,
        step_index: int,
        max_steps: int,
        pieces: Sequence[str],
        settled: Sequence[bool],
        entropy: Sequence[int],
        now: float | None = None,
    ) -> None:
        now = time.monotonic() if now is None else now
        if canvas_index != self.canvas_index:
            old_pieces: tuple[str, ...] = ()
            old_settled: tuple[bool, ...] = ()
            old_times: list[float] = []
        else:
            old_pieces, old_settled, old_times = self.pieces, self.settled, self._settled_at
        count = len(pieces)
        settled = tuple(bool(flag) for flag in settled[:count]) + (False,) * max(0, count - len(settled))
        times = [-1.0] * count
        old_count = len(old_pieces)
        for position in range(count):
            if not settled[position]:
                continue
            if position < old_count and old_settled[position] and old_pieces[position] == pieces[position]:
                times[position] = old_times[position]
            else:
                times[position] = now
        self.canvas_index = canvas_index
        self.step_index = step_index
        self.max_steps = max_steps
        self.pieces = tuple(pieces)
        self.settled = settled
        self.shown = tuple(_display(piece) if flag else NOISE_CELL for piece, flag in zip(self.pieces, settled))
        self.entropy = tuple(entropy[:count]) + (0,) * max(0, count - len(entropy))
        self._settled_at = times
        self.drafts_applied += 1

    def clear(self) -> None:
        self.__init__()

    def segments(self) -> list[CanvasSegment]:
        """What each position shows: its piece when settled, a neutral glyph otherwise."""
        return [
            CanvasSegment(_SPECIAL_MARKUP.sub("", piece) if flag else NOISE_GLYPH, flag, bucket)
            for piece, flag, bucket in zip(self.pieces, self.settled, self.entropy)
        ]

    def is_fading(self, now: float) -> bool:
        return any(0 <= now - at < FADE_S for at in self._settled_at if at >= 0)

    def fade_level(self, position: int, now: float) -> int:
        """0 (just settled) .. FADE_LEVELS (fully shown)."""
        at = self._settled_at[position]
        if at < 0:
            return FADE_LEVELS
        progress = (now - at) / FADE_S
        if progress >= 1:
            return FADE_LEVELS
        return max(0, int(progress * FADE_LEVELS))

    def counter_text(self) -> str:
        if not self.has_draft:
            return "encoding the prompt\u2026"
        return f"canvas {self.canvas_index + 1} \u00b7 step {self.step_index + 1}/{self.max_steps}"

    def settled_count(self) -> int:
        return sum(self.settled)


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\ufffd]")
# Special-token markup (<pad>, <|turn>, <channel|>, <unused12>, ...). The engine sends special
# tokens as empty pieces; this keeps an older engine's draft or a stored replay from showing them.
_SPECIAL_MARKUP = re.compile(
    r"<\|[^<>\s]*>|<[^<>\s|]*\|>|<(?:pad|bos|eos|unk|mask|unused\d+|start_of_turn|end_of_turn)>"
)


def _display(piece: str) -> str:
    # QTextLayout breaks lines at U+2028, not at "\n"; tabs become spaces so runs stay aligned.
    # A byte-fallback token decodes to U+FFFD on its own; the committed text joins the bytes.
    piece = _SPECIAL_MARKUP.sub("", piece)
    return _CONTROL.sub("", piece.replace("\t", "    ")).replace("\n", "\u2028")


def layout_canvas(
    animation: CanvasAnimation,
    font: QFont,
    width: float,
    colors: ThemeColors,
    now: float,
    motion: bool = True,
) -> tuple[QTextLayout, float]:
    """A laid-out QTextLayout of the canvas and its height; `motion=False` skips the fade."""
    text_parts: list[str] = []
    ranges: list[QTextLayout.FormatRange] = []
    text_color = QColor(colors.text)
    glyph_color = QColor(colors.noise_glyph)
    tints = [QColor(tint) for tint in colors.entropy_tints]
    formats: dict[tuple[int, int], QTextCharFormat] = {}
    offset = 0
    run_key: tuple[int, int] | None = None
    run_start = 0
    fading = motion and animation.is_fading(now)
    for position, (shown, flag, bucket) in enumerate(zip(animation.shown, animation.settled, animation.entropy)):
        if flag:
            level = animation.fade_level(position, now) if fading else FADE_LEVELS
            key = (min(max(bucket, 0), 3), level)
        else:
            key = (-1, FADE_LEVELS)
        if not shown:
            continue
        if key != run_key:
            if run_key is not None and offset > run_start:
                ranges.append(_format_range(run_start, offset - run_start, run_key, formats, text_color, glyph_color, tints))
            run_key, run_start = key, offset
        text_parts.append(shown)
        offset += len(shown)
    if run_key is not None and offset > run_start:
        ranges.append(_format_range(run_start, offset - run_start, run_key, formats, text_color, glyph_color, tints))

    layout = QTextLayout("".join(text_parts), font)
    option = QTextOption()
    option.setWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
    layout.setTextOption(option)
    layout.setFormats(ranges)
    layout.setCacheEnabled(True)
    height = 0.0
    layout.beginLayout()
    while True:
        line = layout.createLine()
        if not line.isValid():
            break
        line.setLineWidth(width)
        line.setPosition(QPointF(0, height))
        height += line.height()
    layout.endLayout()
    return layout, height


def _format_range(start, length, key, formats, text_color, glyph_color, tints) -> QTextLayout.FormatRange:
    char_format = formats.get(key)
    if char_format is None:
        bucket, level = key
        if bucket < 0:
            color = QColor(glyph_color)
        else:
            color = QColor(tints[bucket] if bucket > 0 else text_color)
            color.setAlphaF(0.15 + 0.85 * level / FADE_LEVELS)
        char_format = QTextCharFormat()
        char_format.setForeground(color)
        if bucket >= 2:
            char_format.setFontUnderline(True)
            char_format.setUnderlineStyle(QTextCharFormat.UnderlineStyle.DotLine)
            char_format.setUnderlineColor(color)
        formats[key] = char_format
    format_range = QTextLayout.FormatRange()
    format_range.start = start
    format_range.length = length
    format_range.format = char_format
    return format_range


def text_height(text: str, font: QFont, width: float) -> float:
    """Height of plain text wrapped like the canvas (to reserve room for a canvas before it settles)."""
    layout = QTextLayout(_display(text), font)
    option = QTextOption()
    option.setWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
    layout.setTextOption(option)
    height = 0.0
    layout.beginLayout()
    while True:
        line = layout.createLine()
        if not line.isValid():
            break
        line.setLineWidth(width)
        height += line.height()
    layout.endLayout()
    return height
