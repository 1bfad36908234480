"""The transcript: a list view whose delegate paints each message from a cached QTextDocument.

Only the streaming (or replaying) row repaints while a canvas animates, driven by one timer
that runs only while a token is fading in.
"""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import logging
import time
import typing
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QAbstractItemModel,
    QEvent,
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QPointF,
    QRect,
    QRectF,
    QSize,
    Qt,
    QTimer,
    QUrl,
    Signal,
)
from PySide6.QtGui import (
    QAbstractTextDocumentLayout,
    QAction,
    QColor,
    QDesktopServices,
    QFont,
    QFontDatabase,
    QFontMetricsF,
    QGuiApplication,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
    QTextDocument,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QListView,
    QMenu,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTextBrowser,
    QWidget,
)

from app.canvas_paint import FADE_LEVELS, FADE_S, CanvasAnimation, CanvasSegment, layout_canvas, text_height
from app.qt_models import MessageRole
from app.replay import ReplayError, ReplayPlayer
from app.theme import LIGHT, ThemeColors
from app.thought_channel import THOUGHT_SCHEME, reasoning_of, with_thought

if typing.TYPE_CHECKING:
    from app.markdown_render import RenderedMarkdown

# Same as app.markdown_render.COPY_CODE_SCHEME; that module (markdown-it, Pygments) is imported on
# the first assistant message, not at startup.
COPY_CODE_SCHEME = "copy-code"

log = logging.getLogger("canvas_chat.transcript")

SIDE_MARGIN = 18
ROW_GAP = 8
BUBBLE_PAD_X = 14
BUBBLE_PAD_Y = 10
USER_MAX_FRACTION = 0.78
ASSISTANT_MAX_WIDTH = 900
FRAME_MS = 16
# Fading tokens step through FADE_LEVELS alpha levels; the canvas is re-laid out once per level.
FADE_STEP_S = FADE_S / FADE_LEVELS
DOC_CACHE_SIZE = 400
REPLAY_END_HOLD_S = 0.6

STATUS_MARKS = {
    "stopped": "Stopped",
    "interrupted": "Interrupted \u2014 the worker stopped",
    "error": "Error",
}


def message_of(index: QModelIndex) -> Any:
    """The `app.chat.Message` behind a transcript row."""
    return index.data(MessageRole.MESSAGE)


def stats_line(stats: dict[str, Any] | None) -> str:
    """"0.21 s to first draft · 48.0 tok/s · 3.2 tok/forward · 5.0 steps/canvas"."""
    if not stats:
        return ""
    parts = []
    first = stats.get("time_to_first_draft_s")
    if first is not None:
        parts.append(f"{first:.2f} s to first draft")
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


@dataclass
class StreamingSnapshot:
    """What the streaming row shows right now (for tests and the benchmark)."""

    message_id: str
    canvas_index: int
    step_index: int
    max_steps: int
    counter_text: str
    segments: list[CanvasSegment]
    committed_text: str
    drafts_applied: int
    paints: int

    @property
    def drawn_text(self) -> str:
        return "".join(segment.text for segment in self.segments)


@dataclass
class _RowGeometry:
    bubble: QRect
    content_left: int
    content_top: int
    content_width: int
    footer_top: int  # below the bubble: stats, marks, action links
    links: dict[str, QRect]


class _Playback:
    def __init__(self, player: ReplayPlayer, timer: QTimer):
        self.player = player
        self.timer = timer
        self.timeline = player.timeline()
        self.upcoming = next(self.timeline, None)
        self.frames_shown = 0


class _AnimatedRow:
    def __init__(self, index: QPersistentModelIndex, message_id: str, replay: bool):
        self.index = index
        self.message_id = message_id
        self.replay = replay
        self.animation = CanvasAnimation()
        self.committed_text = ""
        self.layout = None
        self.in_code = False
        self.layout_key: tuple = ()
        self.reserve_key: tuple = ()
        self.reserved_height = 0.0
        self.announced: tuple = ()  # (canvas height, replay text) the list last laid the row out with
        self.seen: tuple = ()  # (content, status) of the message when the list last saw a change
        self.height = 0.0
        self.paints = 0


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
        reasoning = reasoning_of(message)
        if reasoning:
            return with_thought(message.content, reasoning, message.id in self._view.expanded_thoughts)
        return message.content

    def document_for(self, message: Any, width: int) -> tuple[QTextDocument, RenderedMarkdown | None]:
        """The laid-out document of a message's shown (committed) text at a content width."""
        text = self.shown_text(message)
        key = (message.id, message.role, text, width, self.colors.name, self._font.key())
        cached = self._docs.get(key)
        if cached is not None:
            self._docs.move_to_end(key)
            return cached
        doc, rendered = self._build_document(message.role, text, width)
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
            from app.markdown_render import renderer_for

            renderer = renderer_for(self.colors)
            rendered = renderer.render(text)
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

    def _geometry(self, option_rect: QRect, message: Any, viewport_width: int) -> _RowGeometry:
        content_width = self.content_width(message.role, viewport_width)
        doc, _ = self.document_for(message, content_width)
        doc_width = int(doc.textWidth()) if message.role == "user" else content_width
        body_height = self._body_height(message, doc, content_width)
        bubble_width = doc_width + 2 * BUBBLE_PAD_X
        if message.role == "user":
            left = option_rect.right() - SIDE_MARGIN - bubble_width + 1
        else:
            left = option_rect.left() + SIDE_MARGIN
        bubble = QRect(left, option_rect.top() + ROW_GAP // 2, bubble_width, body_height + 2 * BUBBLE_PAD_Y)
        links = self._footer_links(message, bubble)
        return _RowGeometry(
            bubble=bubble,
            content_left=left + BUBBLE_PAD_X,
            content_top=bubble.top() + BUBBLE_PAD_Y,
            content_width=doc_width,
            footer_top=bubble.bottom() + 2,
            links=links,
        )

    def _body_height(self, message: Any, doc: QTextDocument, content_width: int) -> int:
        height = doc.size().height() if self.shown_text(message) else 0.0
        row = self._view.animated_row(message.id)
        if row is not None:
            height += self._view.canvas_block_height(row, content_width)
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
        if message.role != "user" and not message.content.strip():
            return links  # nothing to copy or replay: a reply stopped before any text settled
        names = ["Copy"]
        if message.role == "user":
            names.append("Edit")
        elif message.replay:
            names.append("Replay")
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

    def row_geometry(self, index: QModelIndex) -> _RowGeometry | None:
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

    def _paint_canvas(self, painter: QPainter, row: _AnimatedRow, left: int, top: float, width: int) -> None:
        colors = self.colors
        small = QFontMetricsF(self._small_font)
        row.paints += 1
        if not self.reduced_motion or row.replay:
            layout = self._view.canvas_layout(row, width, time.monotonic())
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

    def _paint_footer(self, painter: QPainter, message: Any, geometry: _RowGeometry) -> None:
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
        if message.role != "user":
            mark = STATUS_MARKS.get(message.status)
            x = float(geometry.bubble.left() + 4)
            if mark:
                if message.status == "error" and message.error:
                    mark = f"Error: {message.error}"
                elif not message.content.strip():
                    mark += " before any text settled"
                painter.setPen(QColor(colors.mark_error if message.status == "error" else colors.mark_stopped))
                mark_text = mark + ("  \u00b7  " if message.stats else "")
                painter.drawText(QPointF(x, baseline), mark_text)
                x += metrics.horizontalAdvance(mark_text)
            line = stats_line(message.stats)
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


class TranscriptView(QListView):
    """Messages of the open conversation; animates the open canvas of the streaming reply."""

    sig_edit_requested = Signal(str)  # message id of a user message
    sig_regenerate_requested = Signal(str)  # message id of an assistant message
    sig_replay_requested = Signal(str)
    copied = Signal(str)  # what went to the clipboard
    replay_started = Signal(str)
    replay_progressed = Signal(str, int)  # message id, frames shown so far
    replay_finished = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.expanded_thoughts: set[str] = set()  # replies whose thought channel is open
        self.setObjectName("transcriptView")
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setUniformItemSizes(False)
        self.setWordWrap(True)
        self.setMouseTracking(True)
        self.setFrameShape(QListView.Shape.NoFrame)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.DefaultContextMenu)
        self.verticalScrollBar().setSingleStep(24)
        self._delegate = TranscriptDelegate(self)
        self.setItemDelegate(self._delegate)
        self._rows: dict[str, _AnimatedRow] = {}
        self._selected_id = ""
        self._hovered_id = ""
        self._hovered_index: QPersistentModelIndex | None = None
        self._editor_index: QPersistentModelIndex | None = None
        self._stick_to_bottom = True
        self._frame_timer = QTimer(self)
        self._frame_timer.setInterval(max(FRAME_MS, int(FADE_STEP_S * 1000)))
        self._frame_timer.timeout.connect(self._on_frame_timer_timeout)
        self._replays: dict[str, Any] = {}
        self.verticalScrollBar().valueChanged.connect(self._on_scrollbar_value_changed)
        self.verticalScrollBar().rangeChanged.connect(self._on_scrollbar_range_changed)

    # -- configuration

    @property
    def delegate(self) -> TranscriptDelegate:
        return self._delegate

    def set_colors(self, colors: ThemeColors) -> None:
        self._delegate.set_colors(colors)
        for row in self._rows.values():
            row.layout_key = ()
        self._relayout()

    def set_reduced_motion(self, reduced: bool) -> None:
        self._delegate.reduced_motion = reduced
        self._relayout()

    def setModel(self, model: QAbstractItemModel | None) -> None:
        old = self.model()
        if old is not None:
            for signal, slot in self._model_connections(old):
                signal.disconnect(slot)
        super().setModel(model)
        if model is not None:
            for signal, slot in self._model_connections(model):
                signal.connect(slot)
        self._on_model_reset()

    def _model_connections(self, model):
        return [
            (model.modelReset, self._on_model_reset),
            (model.rowsInserted, self._on_model_rows_inserted),
            (model.rowsRemoved, self._on_model_rows_removed),
        ]

    # -- streaming rows

    def animated_row(self, message_id: str) -> _AnimatedRow | None:
        return self._rows.get(message_id)

    def canvas_block_height(self, row: _AnimatedRow, width: int) -> float:
        """Height of the open canvas plus its step counter (does not depend on the fade)."""
        small = QFontMetricsF(self._delegate._small_font).height() + 6
        if self._delegate.reduced_motion and not row.replay:
            return small
        if row.layout is None or row.layout_key[:3] != self._layout_key_base(row, width):
            self.canvas_layout(row, width, time.monotonic())
        return row.height + small

    def _layout_key_base(self, row: _AnimatedRow, width: int) -> tuple:
        return (row.animation.drafts_applied, width, self._delegate.colors.name)

    def canvas_layout(self, row: _AnimatedRow, width: int, now: float):
        """The open canvas laid out for painting (rebuilt only when a draft or a fade step changed it)."""
        motion = not self._delegate.reduced_motion or row.replay
        fade_step = int(now / FADE_STEP_S) if motion and row.animation.is_fading(now) else -1
        key = (*self._layout_key_base(row, width), fade_step)
        if key != row.layout_key or row.layout is None:
            if not row.animation.has_draft:
                row.layout, row.height = None, 0.0
            else:
                row.in_code = self._inside_code_fence(row)
                font = self._delegate.code_font if row.in_code else self._delegate._font
                layout_width = width - 16 if row.in_code else width
                row.layout, height = layout_canvas(row.animation, font, layout_width, self._delegate.colors, now, motion)
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

    def _inside_code_fence(self, row: _AnimatedRow) -> bool:
        """Whether the committed text ends inside a fenced code block (so the canvas is code too)."""
        if row.replay:
            text = row.committed_text
        else:
            index = QModelIndex(row.index)
            message = message_of(index) if index.isValid() else None
            text = message.content if message is not None else ""
        fences = sum(1 for line in text.splitlines() if line.lstrip().startswith(("```", "~~~")))
        return fences % 2 == 1

    def apply_draft(self, message_id: str, draft: Any, replay: bool = False) -> None:
        """Draws a Draft (or DraftState) as the open canvas of the given reply's row."""
        row = self._row_for(message_id, replay)
        if row is None:
            return
        previous_canvas = row.animation.canvas_index
        row.animation.apply(draft.canvas_index, draft.step_index, draft.max_steps, draft.pieces, draft.settled, draft.entropy)
        if self._delegate.reduced_motion and not replay and previous_canvas == row.animation.canvas_index:
            return  # reduced motion shows no step-by-step change: nothing to repaint
        self._refresh_row(row)
        if not self._delegate.reduced_motion or replay:
            self._ensure_frame_timer()

    def end_canvas(self, message_id: str) -> None:
        """A canvas was committed: its text is now part of the message; clear the open canvas."""
        row = self._rows.get(message_id)
        if row is None:
            return
        row.animation.clear()
        row.layout, row.layout_key, row.height = None, (), 0.0
        self._refresh_row(row)

    def end_stream(self, message_id: str) -> None:
        row = self._rows.pop(message_id, None)
        if row is None:
            return
        index = QModelIndex(row.index)
        if index.isValid():
            self._delegate.sizeHintChanged.emit(index)
        if not self._rows:
            self._frame_timer.stop()

    def is_streaming(self, message_id: str) -> bool:
        return message_id in self._rows

    def streaming_snapshot(self, message_id: str | None = None) -> StreamingSnapshot | None:
        row = self._rows.get(message_id) if message_id else next(iter(self._rows.values()), None)
        if row is None:
            return None
        message = message_of(QModelIndex(row.index)) if row.index.isValid() else None
        return StreamingSnapshot(
            message_id=row.message_id,
            canvas_index=row.animation.canvas_index,
            step_index=row.animation.step_index,
            max_steps=row.animation.max_steps,
            counter_text=row.animation.counter_text(),
            segments=row.animation.segments(),
            committed_text=message.content if message is not None else "",
            drafts_applied=row.animation.drafts_applied,
            paints=row.paints,
        )

    def frame_timer_active(self) -> bool:
        return self._frame_timer.isActive()

    def _row_for(self, message_id: str, replay: bool = False) -> _AnimatedRow | None:
        row = self._rows.get(message_id)
        if row is not None and row.index.isValid():
            return row
        index = self.index_of_message(message_id)
        if not index.isValid():
            return None
        row = _AnimatedRow(QPersistentModelIndex(index), message_id, replay)
        message = message_of(index)
        row.seen = (message.content, message.status)
        self._rows[message_id] = row
        return row

    def index_of_message(self, message_id: str) -> QModelIndex:
        model = self.model()
        if model is None:
            return QModelIndex()
        for number in range(model.rowCount() - 1, -1, -1):
            index = model.index(number, 0)
            message = message_of(index)
            if message is not None and message.id == message_id:
                return index
        return QModelIndex()

    def _refresh_row(self, row: _AnimatedRow) -> None:
        """Repaints the row, or re-lays the list out when the row's height changed."""
        index = QModelIndex(row.index)
        if not index.isValid():
            return
        width = self._delegate.content_width("assistant", self.viewport().width())
        height = self.canvas_block_height(row, width) if row.animation.has_draft else 0.0
        key = (height, row.committed_text if row.replay else None)
        if key != row.announced:
            row.announced = key
            self._delegate.sizeHintChanged.emit(index)
        else:
            self.viewport().update(self.visualRect(index))

    def _ensure_frame_timer(self) -> None:
        if not self._frame_timer.isActive():
            self._frame_timer.start()

    def _on_frame_timer_timeout(self) -> None:
        now = time.monotonic()
        moving = False
        for row in list(self._rows.values()):
            motion = not self._delegate.reduced_motion or row.replay
            if motion and row.animation.is_fading(now):
                moving = True
                index = QModelIndex(row.index)
                if index.isValid():
                    self.viewport().update(self.visualRect(index))
        if not moving:
            self._frame_timer.stop()

    # -- model events

    def dataChanged(self, top_left: QModelIndex, bottom_right: QModelIndex, roles=()) -> None:
        # QListView re-lays out every row on any dataChanged; a new draft only needs its row
        # repainted, so those never reach it (the list is laid out again when the height changes).
        if top_left.row() == bottom_right.row() and self._apply_draft_only_change(top_left):
            return
        self._on_model_data_changed(top_left, bottom_right, roles)
        super().dataChanged(top_left, bottom_right, roles)

    def _apply_draft_only_change(self, index: QModelIndex) -> bool:
        message = message_of(index)
        row = self._rows.get(message.id) if message is not None else None
        if row is None or row.replay or message.status != "streaming" or message.draft is None:
            return False
        if row.seen != (message.content, message.status):
            return False
        self.apply_draft(message.id, message.draft)
        return True

    def _on_model_data_changed(self, top_left: QModelIndex, bottom_right: QModelIndex, roles=()) -> None:
        for number in range(top_left.row(), bottom_right.row() + 1):
            index = self.model().index(number, 0)
            message = message_of(index)
            if message is None:
                continue
            draft = getattr(message, "draft", None)
            row = self._rows.get(message.id)
            if row is not None:
                row.seen = (message.content, message.status)
            if draft is not None and message.status == "streaming":
                if row is None or (row.animation.canvas_index, row.animation.step_index, row.animation.pieces, row.animation.settled) != (
                    draft.canvas_index,
                    draft.step_index,
                    tuple(draft.pieces),
                    tuple(draft.settled),
                ):
                    self.apply_draft(message.id, draft)
                    continue
            elif row is not None and not row.replay:
                if message.status == "streaming" and draft is None:
                    self.end_canvas(message.id)
                elif message.status != "streaming":
                    self.end_stream(message.id)
            if message.status == "streaming" and row is None:
                self._row_for(message.id)
            self._delegate.sizeHintChanged.emit(index)
        self._keep_editor_fresh(top_left, bottom_right)

    def _on_model_reset(self) -> None:
        self._rows.clear()
        self._frame_timer.stop()
        self._editor_index = None
        self._selected_id = ""
        model = self.model()
        if model is not None:
            for number in range(model.rowCount()):
                message = message_of(model.index(number, 0))
                if message is not None and message.status == "streaming":
                    self._row_for(message.id)
        self._stick_to_bottom = True
        QTimer.singleShot(0, self, self._scroll_if_sticky)

    def _on_model_rows_inserted(self, parent: QModelIndex, first: int, last: int) -> None:
        for number in range(first, last + 1):
            message = message_of(self.model().index(number, 0))
            if message is not None and message.status == "streaming":
                self._row_for(message.id)
        if self._stick_to_bottom or last == self.model().rowCount() - 1:
            self._stick_to_bottom = True
            QTimer.singleShot(0, self, self._scroll_if_sticky)

    def _on_model_rows_removed(self, parent: QModelIndex, first: int, last: int) -> None:
        for message_id, row in list(self._rows.items()):
            if not row.index.isValid():
                del self._rows[message_id]
        if self._editor_index is not None and not self._editor_index.isValid():
            self._editor_index = None
            self._selected_id = ""

    # -- scrolling: follow the reply while the user is at the bottom

    def _on_scrollbar_value_changed(self, value: int) -> None:
        bar = self.verticalScrollBar()
        self._stick_to_bottom = value >= bar.maximum() - 4

    def _on_scrollbar_range_changed(self, minimum: int, maximum: int) -> None:
        self._scroll_if_sticky()

    def _scroll_if_sticky(self) -> None:
        if self._stick_to_bottom:
            bar = self.verticalScrollBar()
            bar.setValue(bar.maximum())

    def scroll_to_end(self) -> None:
        self._stick_to_bottom = True
        self._scroll_if_sticky()

    # -- selection, editor, links, context menu

    def is_selected_message(self, message_id: str) -> bool:
        return bool(message_id) and message_id == self._selected_id

    def has_editor_for(self, message_id: str) -> bool:
        return (
            self._editor_index is not None
            and self._editor_index.isValid()
            and message_id == self._selected_id
            and self.isPersistentEditorOpen(QModelIndex(self._editor_index))
        )

    def select_message(self, message_id: str) -> None:
        """Opens the selectable text of a finished message (closing the previous one)."""
        if self._editor_index is not None and self._editor_index.isValid():
            self.closePersistentEditor(QModelIndex(self._editor_index))
        self._editor_index = None
        previous = self._selected_id
        self._selected_id = message_id
        index = self.index_of_message(message_id) if message_id else QModelIndex()
        if index.isValid():
            message = message_of(index)
            if message.content and not self.is_streaming(message_id):
                self._editor_index = QPersistentModelIndex(index)
                self.openPersistentEditor(index)
            self.viewport().update(self.visualRect(index))
        if previous and previous != message_id:
            old = self.index_of_message(previous)
            if old.isValid():
                self.viewport().update(self.visualRect(old))

    def selected_message_id(self) -> str:
        return self._selected_id

    def _keep_editor_fresh(self, top_left: QModelIndex, bottom_right: QModelIndex) -> None:
        if self._editor_index is None or not self._editor_index.isValid():
            return
        if top_left.row() <= self._editor_index.row() <= bottom_right.row():
            message = message_of(QModelIndex(self._editor_index))
            if message is None or self.is_streaming(message.id):
                self.select_message("")
            else:
                editor = self.indexWidget(QModelIndex(self._editor_index))
                if editor is not None:
                    self._delegate.setEditorData(editor, QModelIndex(self._editor_index))

    def toggle_thought(self, message_id: str) -> None:
        """Expands or collapses a reply's thought channel."""
        self.expanded_thoughts ^= {message_id}
        self.scheduleDelayedItemsLayout()  # the row's height changes
        self.viewport().update()

    def open_anchor(self, index: QPersistentModelIndex, href: str) -> None:
        if href.startswith(THOUGHT_SCHEME + ":"):
            message = message_of(QModelIndex(index))
            if message is not None:
                self.toggle_thought(message.id)
            return
        if href.startswith(COPY_CODE_SCHEME + ":"):
            message = message_of(QModelIndex(index))
            if message is None:
                return
            _, rendered = self._delegate.document_for(message, self._delegate.content_width(message.role, self.viewport().width()))
            number = int(href.split(":", 1)[1])
            if rendered is not None and 0 <= number < len(rendered.code_blocks):
                self._copy(rendered.code_blocks[number])
            return
        url = QUrl(href)
        if url.scheme() in ("http", "https", "mailto"):
            QDesktopServices.openUrl(url)

    def _copy(self, text: str) -> None:
        QGuiApplication.clipboard().setText(text)
        self.copied.emit(text)

    def copy_message(self, message_id: str) -> None:
        index = self.index_of_message(message_id)
        message = message_of(index) if index.isValid() else None
        if message is not None:
            self._copy(message.content)

    def _anchor_at(self, index: QModelIndex, pos: QPoint) -> str:
        message = message_of(index)
        geometry = self._delegate.row_geometry(index)
        if message is None or geometry is None or not message.content:
            return ""
        doc, _ = self._delegate.document_for(message, self._delegate.content_width(message.role, self.viewport().width()))
        local = QPointF(pos.x() - geometry.content_left, pos.y() - geometry.content_top)
        return doc.documentLayout().anchorAt(local)

    def shows_actions(self, message_id: str) -> bool:
        """Copy/Edit/Replay links show on the hovered and the selected message, and on the last one."""
        if message_id in (self._hovered_id, self._selected_id):
            return True
        model = self.model()
        if model is None or not model.rowCount():
            return False
        last = message_of(model.index(model.rowCount() - 1, 0))
        return last is not None and last.id == message_id

    def _set_hovered(self, index: QModelIndex) -> None:
        message = message_of(index) if index.isValid() else None
        message_id = message.id if message is not None else ""
        if message_id == self._hovered_id:
            return
        previous = QModelIndex(self._hovered_index) if self._hovered_index is not None else QModelIndex()
        self._hovered_id = message_id
        self._hovered_index = QPersistentModelIndex(index) if message_id else None
        for changed in (previous, index):
            if changed.isValid():
                self.viewport().update(self.visualRect(changed))

    def leaveEvent(self, event) -> None:
        self._set_hovered(QModelIndex())
        super().leaveEvent(event)

    def _link_at(self, index: QModelIndex, pos: QPoint) -> str:
        geometry = self._delegate.row_geometry(index)
        message = message_of(index)
        if geometry is None or message is None or not self.shows_actions(message.id):
            return ""
        for name, rect in geometry.links.items():
            if rect.adjusted(-3, -2, 3, 2).contains(pos):
                return name
        return ""

    def trigger_link(self, message_id: str, name: str) -> None:
        if name == "Copy":
            self.copy_message(message_id)
        elif name == "Edit":
            self.sig_edit_requested.emit(message_id)
        elif name == "Replay":
            self.sig_replay_requested.emit(message_id)
        elif name == "Regenerate":
            self.sig_regenerate_requested.emit(message_id)
        elif name == "Stop replay":
            self.stop_replay(message_id)

    def mouseMoveEvent(self, event) -> None:
        index = self.indexAt(event.position().toPoint())
        pointing = False
        self._set_hovered(index)
        if index.isValid():
            pos = event.position().toPoint()
            pointing = bool(self._link_at(index, pos) or self._anchor_at(index, pos))
        self.viewport().setCursor(Qt.CursorShape.PointingHandCursor if pointing else Qt.CursorShape.ArrowCursor)
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            pos = event.position().toPoint()
            index = self.indexAt(pos)
            if index.isValid():
                message = message_of(index)
                link = self._link_at(index, pos)
                if link:
                    self.trigger_link(message.id, link)
                    return
                anchor = self._anchor_at(index, pos)
                if anchor:
                    self.open_anchor(QPersistentModelIndex(index), anchor)
                    return
                geometry = self._delegate.row_geometry(index)
                if geometry is not None and geometry.bubble.contains(pos):
                    self.select_message(message.id)
                    return
            self.select_message("")
        super().mouseReleaseEvent(event)

    def contextMenuEvent(self, event) -> None:
        index = self.indexAt(event.pos())
        if not index.isValid() and self._selected_id:
            index = self.index_of_message(self._selected_id)
        message = message_of(index) if index.isValid() else None
        if message is None:
            return
        menu = self.context_menu_for(message)
        menu.exec(event.globalPos())
        menu.deleteLater()

    def context_menu_for(self, message: Any) -> QMenu:
        menu = QMenu(self)
        copy_action = QAction("Copy message", menu)
        copy_action.triggered.connect(lambda: self.copy_message(message.id))
        menu.addAction(copy_action)
        browser = self.indexWidget(self.index_of_message(message.id))
        if isinstance(browser, QTextBrowser) and browser.textCursor().hasSelection():
            selection = browser.textCursor().selection().toPlainText()
            copy_selection = QAction("Copy selection", menu)
            copy_selection.triggered.connect(lambda: self._copy(selection))
            menu.insertAction(copy_action, copy_selection)
        final = message.status not in ("streaming", "sending")
        if message.role == "user":
            edit = QAction("Edit and resend", menu)
            edit.setEnabled(final)
            edit.triggered.connect(lambda: self.sig_edit_requested.emit(message.id))
            menu.addAction(edit)
        else:
            regenerate = QAction("Regenerate", menu)
            regenerate.setEnabled(final)
            regenerate.triggered.connect(lambda: self.sig_regenerate_requested.emit(message.id))
            menu.addAction(regenerate)
            replay = QAction("Replay the denoising", menu)
            replay.setEnabled(final and bool(message.replay))
            replay.triggered.connect(lambda: self.sig_replay_requested.emit(message.id))
            menu.addAction(replay)
        return menu

    # -- replay of a finished reply's recorded drafts

    def start_replay(self, message_id: str, speed: float = 1.0) -> bool:
        """Plays a finished reply's recording in its row; False when it has none (or it is broken)."""
        index = self.index_of_message(message_id)
        message = message_of(index) if index.isValid() else None
        if message is None or not message.replay or message.status in ("streaming", "sending"):
            return False
        try:
            player = ReplayPlayer(message.replay, speed)
        except (ReplayError, ValueError):
            return False
        if not len(player):
            return False
        self.stop_replay(message_id)
        if self._selected_id == message_id:
            self.select_message("")
        row = self._row_for(message_id, replay=True)
        if row is None:
            return False
        timer = QTimer(self)
        timer.setSingleShot(True)
        playback = _Playback(player, timer)
        self._replays[message_id] = playback
        timer.timeout.connect(lambda: self._on_replay_timer_timeout(message_id))
        timer.start(0)
        self.replay_started.emit(message_id)
        return True

    def stop_replay(self, message_id: str) -> None:
        playback = self._replays.pop(message_id, None)
        if playback is None:
            return
        playback.timer.stop()
        playback.timer.deleteLater()
        self.end_stream(message_id)
        self.replay_finished.emit(message_id)

    def stop_all_replays(self) -> None:
        for message_id in list(self._replays):
            self.stop_replay(message_id)

    def is_replaying(self, message_id: str = "") -> bool:
        return message_id in self._replays if message_id else bool(self._replays)

    def _on_replay_timer_timeout(self, message_id: str) -> None:
        playback = self._replays.get(message_id)
        row = self._rows.get(message_id)
        if playback is None or row is None or playback.upcoming is None:
            self.stop_replay(message_id)
            return
        _, frame = playback.upcoming
        playback.upcoming = next(playback.timeline, None)
        playback.frames_shown += 1
        row.committed_text = frame.committed_text
        if frame.kind == "draft":
            self.apply_draft(message_id, frame, replay=True)
        else:
            row.animation.clear()
            row.layout, row.layout_key, row.height = None, (), 0.0
            self._refresh_row(row)
        delay_s = playback.upcoming[0] if playback.upcoming is not None else REPLAY_END_HOLD_S
        playback.timer.start(int(delay_s * 1000))
        self.replay_progressed.emit(message_id, playback.frames_shown)

    # -- misc

    def _relayout(self) -> None:
        self._delegate.clear_cache()
        self.scheduleDelayedItemsLayout()
        self.viewport().update()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if event.oldSize().width() != event.size().width():
            self.scheduleDelayedItemsLayout()

    def changeEvent(self, event: QEvent) -> None:
        delegate = getattr(self, "_delegate", None)
        if delegate is not None and event.type() == QEvent.Type.FontChange:
            delegate.set_font(self.font())
            self._relayout()
        super().changeEvent(event)
