"""`TranscriptDelegate`: paints each message as a bubble from a cached QTextDocument, its footer
(stats, marks, action links) and, on a streaming or replaying row, the open canvas."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import logging
import time
import typing
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QPointF, QRect, QRectF, QSize, Qt
from PySide6.QtGui import (
    QAbstractTextDocumentLayout,
    QColor,
    QFont,
    QFontDatabase,
    QFontMetricsF,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
    QTextDocument,
)
from PySide6.QtWidgets import QStyledItemDelegate, QStyleOptionViewItem, QTextBrowser, QWidget

from app.transcript.canvas_paint import FADE_LEVELS, FADE_S, layout_canvas, text_height
from app.chat.qt_models import MessageRole
from app.theme import LIGHT, ThemeColors
from app.transcript.span_animation import draw_span_into, source_with_mark
from app.transcript.thought_channel import reasoning_of, with_thought

from app.transcript.animation import AnimatedRow
from app.transcript.message_images import MessageImages

if typing.TYPE_CHECKING:
    from app.transcript.markdown_render import RenderedMarkdown
    from app.transcript.view import TranscriptView

log = logging.getLogger("canvas_chat.transcript")

SIDE_MARGIN = 18
ROW_GAP = 8
BUBBLE_PAD_X = 14
BUBBLE_PAD_Y = 10
USER_MAX_FRACTION = 0.78
ASSISTANT_MAX_WIDTH = 900
# Fading tokens step through FADE_LEVELS alpha levels; the canvas is re-laid out once per level.
FADE_STEP_S = FADE_S / FADE_LEVELS
DOC_CACHE_SIZE = 400

STATUS_MARKS = {
    "stopped": "Stopped",
    "interrupted": "Interrupted \u2014 the worker stopped",
    "error": "Error",
}


def message_of(index: QModelIndex) -> Any:
    """The `app.chat.messages.Message` behind a transcript row."""
    return index.data(MessageRole.MESSAGE)


def stats_line(stats: dict[str, Any] | None) -> str:
    """"0.21 s to first draft · 48.0 tok/s · 3.2 tok/forward · 5.0 steps/canvas"."""
    if not stats:
        return ""
    parts = []
    first = stats.get("time_to_first_draft_s")
    if first is not None:
        parts.append(f"{first:.2f} s to first draft")
    first_canvas = stats.get("time_to_first_canvas_s")  # a remote reply: no drafts, whole canvases
    if first_canvas is not None:
        parts.append(f"{first_canvas:.2f} s to first canvas")
    speed = stats.get("tokens_per_s")
    if speed is not None:
        parts.append(f"{speed:.1f} tok/s")
    per_forward = stats.get("tokens_per_forward")
    if per_forward is not None:
        parts.append(f"{per_forward:.1f} tok/forward")
    steps = stats.get("steps_per_canvas")
    if steps is not None:
        parts.append(f"{steps:.1f} steps/canvas")
    return " \u00b7 ".join(parts)


def version_links(message: Any) -> list[str]:
    """The footer links of a reply rewritten in place: back to its version before, or forward."""
    versions = message.versions
    if versions is None:
        return []
    return (["Undo rewrite"] if versions.can_undo else []) + (["Redo rewrite"] if versions.can_redo else [])


@dataclass
class RowGeometry:
    bubble: QRect
    content_left: int
    content_top: int
    content_width: int
    footer_top: int  # below the bubble: stats, marks, action links
    links: dict[str, QRect]


class TranscriptDelegate(QStyledItemDelegate):
    """Paints messages as bubbles; the streaming row adds the open canvas under its text."""

    def __init__(self, view: TranscriptView):
        super().__init__(view)
        self._view = view
        self._docs: OrderedDict[tuple, tuple[QTextDocument, RenderedMarkdown | None]] = OrderedDict()
        self.colors: ThemeColors = LIGHT
        self.reduced_motion = False
        self._font = QFont(view.font())
        self._small_font = QFont(self._font)
        self._small_font.setPointSizeF(max(7.0, self._font.pointSizeF() * 0.85))
        self._mono_family = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont).family()
        self.paint_counts: Counter[str] = Counter()  # paints per message id (tests, benchmark)
        self.code_font = QFont(self._mono_family, self._font.pointSize())
        self.images = MessageImages()

    # -- configuration

    def set_colors(self, colors: ThemeColors) -> None:
        self.colors = colors
        self._docs.clear()

    def set_font(self, font: QFont) -> None:
        self._font = QFont(font)
        self.code_font = QFont(self._mono_family, font.pointSize())
        self._small_font = QFont(font)
        self._small_font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        self._docs.clear()

    # -- documents

    def shown_text(self, message: Any) -> str:
        """The message text on screen: during a replay, only what was committed so far."""
        row = self._view.animated_row(message.id)
        if row is not None and row.replay:
            return row.committed_text
        if message.rewrite is not None:
            return source_with_mark(message.rewrite)
        reasoning = reasoning_of(message)
        if reasoning:
            return with_thought(message.content, reasoning, message.id in self._view.expanded_thoughts)
        return message.content

    def document_for(self, message: Any, width: int) -> tuple[QTextDocument, RenderedMarkdown | None]:
        """The laid-out document of a message's shown (committed) text at a content width."""
        text = self.shown_text(message)
        key = (message.id, message.role, text, width, self.colors.name, self._font.key(), message.rewrite)
        cached = self._docs.get(key)
        if cached is not None:
            self._docs.move_to_end(key)
            return cached
        doc, rendered = self._build_document(message.role, text, width)
        if message.rewrite is not None:
            draw_span_into(doc, message.rewrite, self.colors)
        self._docs[key] = (doc, rendered)
        while len(self._docs) > DOC_CACHE_SIZE:
            self._docs.popitem(last=False)
        return doc, rendered

    def _build_document(self, role: str, text: str, width: int) -> tuple[QTextDocument, RenderedMarkdown | None]:
        doc = QTextDocument()
        doc.setDefaultFont(self._font)
        doc.setDocumentMargin(0)
        doc.setUndoRedoEnabled(False)
        rendered = None
        if role == "user":
            doc.setPlainText(text)
        else:
            from app.transcript.markdown_render import renderer_for

            renderer = renderer_for(self.colors)
            font_pt = self._font.pointSizeF() if self._font.pointSizeF() > 0 else self._font.pixelSize() * 0.75
            rendered = renderer.render(text, font_pt, round(self._view.devicePixelRatioF()))
            doc.setDefaultStyleSheet(renderer.style_sheet().replace("monospace", self._mono_family))
            doc.setHtml(rendered.html)
        doc.setTextWidth(width)
        if role == "user":
            ideal = doc.idealWidth()
            if ideal < width:
                doc.setTextWidth(max(1.0, ideal + 1))
        return doc, rendered

    def clear_cache(self) -> None:
        self._docs.clear()

    # -- geometry

    def _bubble_width_limit(self, role: str, viewport_width: int) -> int:
        available = max(120, viewport_width - 2 * SIDE_MARGIN)
        if role == "user":
            return max(120, int(available * USER_MAX_FRACTION))
        return min(available, ASSISTANT_MAX_WIDTH)

    def content_width(self, role: str, viewport_width: int) -> int:
        return self._bubble_width_limit(role, viewport_width) - 2 * BUBBLE_PAD_X

    def _footer_height(self, message: Any) -> int:
        if message.status in ("streaming", "sending"):
            return 0
        return int(QFontMetricsF(self._small_font).height()) + 4

    def _geometry(self, option_rect: QRect, message: Any, viewport_width: int) -> RowGeometry:
        content_width = self.content_width(message.role, viewport_width)
        doc, _ = self.document_for(message, content_width)
        doc_width = int(doc.textWidth()) if message.role == "user" else content_width
        body_height = self._body_height(message, doc, content_width)
        images = self.images.block_size(message, content_width)
        doc_width = max(doc_width, images.width())
        body_height += images.height()
        bubble_width = doc_width + 2 * BUBBLE_PAD_X
        if message.role == "user":
            left = option_rect.right() - SIDE_MARGIN - bubble_width + 1
        else:
            left = option_rect.left() + SIDE_MARGIN
        bubble = QRect(left, option_rect.top() + ROW_GAP // 2, bubble_width, body_height + 2 * BUBBLE_PAD_Y)
        links = self._footer_links(message, bubble)
        return RowGeometry(
            bubble=bubble,
            content_left=left + BUBBLE_PAD_X,
            content_top=bubble.top() + BUBBLE_PAD_Y + images.height(),
            content_width=doc_width,
            footer_top=bubble.bottom() + 2,
            links=links,
        )

    def _body_height(self, message: Any, doc: QTextDocument, content_width: int) -> int:
        height = doc.size().height() if self.shown_text(message) else 0.0
        row = self._view.animated_row(message.id)
        if row is not None:
            height += self.canvas_block_height(row, content_width)
        if getattr(message, "attachments", ()) and not height:
            return 0  # images only: the thumbnails are the body
        return int(max(height, QFontMetricsF(self._font).height()))

    def _footer_links(self, message: Any, bubble: QRect) -> dict[str, QRect]:
        links: dict[str, QRect] = {}
        if message.status in ("streaming", "sending"):
            return links
        metrics = QFontMetricsF(self._small_font)
        row = self._view.animated_row(message.id)
        if row is not None and row.replay:
            width = int(metrics.horizontalAdvance("Stop replay")) + 2
            top = bubble.bottom() + 3
            return {"Stop replay": QRect(bubble.right() - width, top, width, int(metrics.height()))}
        retry = message.role == "assistant" and message.status == "interrupted"
        if message.role != "user" and not message.content.strip() and not retry:
            return links  # nothing to copy or replay: a reply stopped before any text settled
        if message.rewrite is not None:
            return links
        names = ["Copy"] if message.role == "user" or message.content.strip() else []
        if message.role == "user":
            names.append("Edit")
        elif message.replay:
            names.append("Replay")
        if retry:
            names.append("Retry")
        names += version_links(message)
        top = bubble.bottom() + 3
        height = int(metrics.height())
        if message.role == "user":
            x = bubble.right()
            for name in names:
                width = int(metrics.horizontalAdvance(name)) + 2
                links[name] = QRect(x - width, top, width, height)
                x -= width + 12
        else:
            x = bubble.right()
            for name in reversed(names):
                width = int(metrics.horizontalAdvance(name)) + 2
                links[name] = QRect(x - width, top, width, height)
                x -= width + 12
        return links

    def row_geometry(self, index: QModelIndex) -> RowGeometry | None:
        message = message_of(index)
        if message is None:
            return None
        rect = self._view.visualRect(index)
        return self._geometry(rect, message, self._view.viewport().width())

    # -- QStyledItemDelegate

    # An exception escaping a Qt virtual aborts the process with PySide6 6.12, so a message that
    # cannot be drawn is logged (tests fail on that record) and shown as a plain line instead.

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:
        try:
            return self._size_hint(index)
        except Exception:
            log.exception("could not lay out transcript row %d", index.row())
            return QSize(self._view.viewport().width(), int(QFontMetricsF(self._font).height()) + ROW_GAP)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        painter.save()
        try:
            self._paint(painter, option, index)
        except Exception:
            log.exception("could not draw transcript row %d", index.row())
            painter.restore()
            painter.save()
            painter.setPen(QColor(self.colors.mark_error))
            painter.drawText(option.rect.adjusted(SIDE_MARGIN, 0, -SIDE_MARGIN, 0), int(Qt.AlignmentFlag.AlignVCenter), "(this message could not be drawn)")
        finally:
            painter.restore()

    def _size_hint(self, index: QModelIndex) -> QSize:
        message = message_of(index)
        if message is None:
            return QSize(0, 0)
        viewport_width = self._view.viewport().width()
        geometry = self._geometry(QRect(0, 0, viewport_width, 0), message, viewport_width)
        height = geometry.bubble.height() + ROW_GAP + self._footer_height(message)
        return QSize(viewport_width, height)

    def _paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        message = message_of(index)
        if message is None:
            return
        self.paint_counts[message.id] += 1
        colors = self.colors
        viewport_width = self._view.viewport().width()
        geometry = self._geometry(option.rect, message, viewport_width)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        path = QPainterPath()
        path.addRoundedRect(QRectF(geometry.bubble), 12, 12)
        if message.role == "user":
            painter.fillPath(path, QColor(colors.user_bubble))
            text_color = QColor(colors.user_text)
        else:
            painter.fillPath(path, QColor(colors.assistant_bubble))
            painter.setPen(QPen(QColor(colors.assistant_border), 1))
            painter.drawPath(path)
            text_color = QColor(colors.text)
        if self._view.is_selected_message(message.id):
            painter.setPen(QPen(QColor(colors.accent), 1.5))
            painter.drawPath(path)

        content_width = geometry.content_width
        if getattr(message, "attachments", ()):
            self.images.paint(
                painter, message, geometry.content_left, geometry.bubble.top() + BUBBLE_PAD_Y, content_width,
                colors.assistant_border,
            )
        doc, _ = self.document_for(message, self.content_width(message.role, viewport_width))
        y = float(geometry.content_top)
        shown = self.shown_text(message)
        if shown and not self._view.has_editor_for(message.id):
            painter.save()
            painter.translate(geometry.content_left, y)
            context = QAbstractTextDocumentLayout.PaintContext()
            context.palette.setColor(QPalette.ColorRole.Text, text_color)
            context.clip = QRectF(0, 0, content_width, doc.size().height())
            doc.documentLayout().draw(painter, context)
            painter.restore()
        if shown:
            y += doc.size().height()

        row = self._view.animated_row(message.id)
        if row is not None:
            self._paint_canvas(painter, row, geometry.content_left, y, content_width)
        elif not shown and message.status in ("streaming", "sending"):
            painter.setFont(self._small_font)
            painter.setPen(QColor(colors.dim_text))
            painter.drawText(QPointF(geometry.content_left, y + QFontMetricsF(self._small_font).ascent()), "\u2026")

        self._paint_footer(painter, message, geometry)
        painter.restore()

    def _paint_canvas(self, painter: QPainter, row: AnimatedRow, left: int, top: float, width: int) -> None:
        colors = self.colors
        small = QFontMetricsF(self._small_font)
        row.paints += 1
        if not self.reduced_motion or row.replay:
            layout = self.canvas_layout(row, width, time.monotonic())
            if layout is not None:
                if row.in_code:
                    painter.fillRect(QRectF(left, top, width, row.height + 4), QColor(colors.code_background))
                    layout.draw(painter, QPointF(left + 8, top + 2))
                else:
                    layout.draw(painter, QPointF(left, top + 2))
            top += row.height
        painter.setFont(self._small_font)
        painter.setPen(QColor(colors.dim_text))
        if self.reduced_motion and not row.replay:
            counter = f"writing canvas {row.animation.canvas_index + 1}\u2026" if row.animation.has_draft else "writing\u2026"
        else:
            counter = row.animation.counter_text()
        if row.replay:
            counter = "replay \u00b7 " + counter
        painter.drawText(QPointF(left, top + 2 + small.ascent()), counter)

    def _paint_footer(self, painter: QPainter, message: Any, geometry: RowGeometry) -> None:
        colors = self.colors
        if message.status in ("streaming", "sending"):
            return
        row = self._view.animated_row(message.id)
        if row is not None and row.replay:
            painter.setFont(self._small_font)
            painter.setPen(QColor(colors.dim_text))
            baseline = geometry.footer_top + 1 + QFontMetricsF(self._small_font).ascent()
            painter.drawText(QPointF(geometry.bubble.left() + 4, baseline), "Replaying…  (Esc or click Stop replay)")
            painter.setPen(QColor(colors.link))
            for name, rect in geometry.links.items():
                painter.drawText(QPointF(rect.left() + 1, baseline), name)
            return
        painter.setFont(self._small_font)
        metrics = QFontMetricsF(self._small_font)
        baseline = geometry.footer_top + 1 + metrics.ascent()
        if message.rewrite is not None:
            painter.setPen(QColor(colors.dim_text))
            painter.drawText(QPointF(geometry.bubble.left() + 4, baseline), message.rewrite.counter_text())
            return
        if message.role != "user":
            mark = STATUS_MARKS.get(message.status)
            x = float(geometry.bubble.left() + 4)
            if mark:
                if message.status == "error" and message.error:
                    mark = f"Error: {message.error}"
                elif message.status == "interrupted" and getattr(message, "answered_by", "").startswith("Remote"):
                    mark = "Interrupted \u2014 the server connection was lost"
                elif not message.content.strip():
                    mark += " before any text settled"
                painter.setPen(QColor(colors.mark_error if message.status == "error" else colors.mark_stopped))
                mark_text = mark + ("  \u00b7  " if message.stats else "")
                painter.drawText(QPointF(x, baseline), mark_text)
                x += metrics.horizontalAdvance(mark_text)
            line = stats_line(message.stats)
            if message.versions is not None and len(message.versions.items) > 1:
                versions = message.versions
                line = f"version {versions.current + 1} of {len(versions.items)}" + (" \u00b7 " + line if line else "")
            if line:
                painter.setPen(QColor(colors.dim_text))
                limit = (min(r.left() for r in geometry.links.values()) if geometry.links else geometry.bubble.right()) - x - 12
                painter.drawText(QPointF(x, baseline), metrics.elidedText(line, Qt.TextElideMode.ElideRight, max(0.0, limit)))
        if not self._view.shows_actions(message.id):
            return
        painter.setPen(QColor(colors.link))
        for name, rect in geometry.links.items():
            painter.drawText(QPointF(rect.left() + 1, baseline), name)

    # -- selectable text: a read-only browser over the selected message

    def createEditor(self, parent: QWidget, option: QStyleOptionViewItem, index: QModelIndex) -> QWidget:
        browser = QTextBrowser(parent)
        browser.setAccessibleName("Selectable message text")
        browser.setAccessibleDescription(index.data(Qt.ItemDataRole.AccessibleTextRole) or "")
        browser.setFrameShape(QTextBrowser.Shape.NoFrame)
        browser.setOpenLinks(False)
        browser.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        browser.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        browser.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
            | Qt.TextInteractionFlag.TextSelectableByKeyboard
            | Qt.TextInteractionFlag.LinksAccessibleByMouse
        )
        browser.viewport().setAutoFillBackground(False)
        browser.setStyleSheet("QTextBrowser { background: transparent; }")
        browser.setObjectName("messageTextBrowser")
        browser.anchorClicked.connect(lambda url, i=QPersistentModelIndex(index): self._view.open_anchor(i, url.toString()))
        return browser

    def setEditorData(self, editor: QWidget, index: QModelIndex) -> None:
        message = message_of(index)
        if message is None:
            return
        doc, _ = self.document_for(message, self.content_width(message.role, self._view.viewport().width()))
        clone = doc.clone(editor)
        editor.setDocument(clone)
        palette = editor.palette()
        palette.setColor(QPalette.ColorRole.Text, QColor(self.colors.user_text if message.role == "user" else self.colors.text))
        editor.setPalette(palette)

    def updateEditorGeometry(self, editor: QWidget, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        message = message_of(index)
        if message is None:
            return
        geometry = self._geometry(option.rect, message, self._view.viewport().width())
        doc, _ = self.document_for(message, self.content_width(message.role, self._view.viewport().width()))
        editor.setGeometry(QRect(geometry.content_left, geometry.content_top, geometry.content_width, int(doc.size().height()) + 1))

    def setModelData(self, editor, model, index) -> None:  # read-only
        return

    # -- the open canvas of a streaming (or replaying) row

    def canvas_block_height(self, row: AnimatedRow, width: int) -> float:
        """Height of the open canvas plus its step counter (does not depend on the fade)."""
        small = QFontMetricsF(self._small_font).height() + 6
        if self.reduced_motion and not row.replay:
            return small
        if row.layout is None or row.layout_key[:3] != self._layout_key_base(row, width):
            self.canvas_layout(row, width, time.monotonic())
        return row.height + small

    def _layout_key_base(self, row: AnimatedRow, width: int) -> tuple:
        return (row.animation.drafts_applied, width, self.colors.name)

    def canvas_layout(self, row: AnimatedRow, width: int, now: float):
        """The open canvas laid out for painting (rebuilt only when a draft or a fade step changed it)."""
        motion = not self.reduced_motion or row.replay
        fade_step = int(now / FADE_STEP_S) if motion and row.animation.is_fading(now) else -1
        key = (*self._layout_key_base(row, width), fade_step)
        if key != row.layout_key or row.layout is None:
            if not row.animation.has_draft:
                row.layout, row.height = None, 0.0
            else:
                row.in_code = self._inside_code_fence(row)
                font = self.code_font if row.in_code else self._font
                layout_width = width - 16 if row.in_code else width
                row.layout, height = layout_canvas(row.animation, font, layout_width, self.colors, now, motion)
                # The row keeps the height of the canvas's full text from its first draft on, and
                # never shrinks within a canvas: the list is re-laid out rarely, and nothing jumps.
                reserve_key = (row.animation.canvas_index, layout_width, font.key())
                if reserve_key != row.reserve_key:
                    row.reserve_key, row.reserved_height = reserve_key, 0.0
                if row.reserved_height == 0.0:
                    # The first draft's argmax text is about as long as the canvas will be.
                    height = max(height, text_height("".join(row.animation.pieces), font, layout_width))
                row.reserved_height = max(row.reserved_height, height)
                row.height = row.reserved_height
            row.layout_key = key
        return row.layout

    def _inside_code_fence(self, row: AnimatedRow) -> bool:
        """Whether the committed text ends inside a fenced code block (so the canvas is code too)."""
        if row.replay:
            text = row.committed_text
        else:
            index = QModelIndex(row.index)
            message = message_of(index) if index.isValid() else None
            text = message.content if message is not None else ""
        fences = sum(1 for line in text.splitlines() if line.lstrip().startswith(("```", "~~~")))
        return fences % 2 == 1
