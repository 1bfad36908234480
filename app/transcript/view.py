"""The transcript: a list view of the open conversation's messages, painted by `TranscriptDelegate`.

Only the streaming (or replaying) row repaints while a canvas animates, driven by one timer
that runs only while a token is fading in. A new draft reaches the view as a change of the
`MessageRole.DRAFT` role alone, and only repaints its row.
"""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import logging
import time
from typing import Any

from PySide6.QtCore import QAbstractItemModel, QEvent, QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtWidgets import QAbstractItemView, QListView, QWidget

from app.chat.qt_models import MessageRole
from app.chat.replay import ReplayError, ReplayPlayer
from app.theme import ThemeColors
from app.transcript.animation import AnimatedRow, Playback, StreamingSnapshot
from app.transcript.delegate import FADE_STEP_S, TranscriptDelegate, message_of
from app.transcript.pointer import TranscriptPointer

log = logging.getLogger("canvas_chat.transcript")

FRAME_MS = 16
REPLAY_END_HOLD_S = 0.6


class TranscriptView(TranscriptPointer, QListView):
    """Messages of the open conversation; animates the open canvas of the streaming reply."""

    sig_edit_requested = Signal(str)  # message id of a user message
    sig_regenerate_requested = Signal(str)  # message id of an assistant message
    sig_retry_requested = Signal(str)  # message id of an interrupted reply ("Retry" under it)
    sig_replay_requested = Signal(str)
    copied = Signal(str)  # what went to the clipboard
    replay_started = Signal(str)
    replay_progressed = Signal(str, int)  # message id, number (1-based) of the frame on screen
    replay_state_changed = Signal(str)  # a replay was paused or resumed
    replay_finished = Signal(str)
    image_opened = Signal(str, int)  # message id, number of the image shown in the viewer
    # Rewrite a span of a reply: message id, [start, end) characters of its text, ask for an instruction.
    sig_rewrite_requested = Signal(str, int, int, bool)
    sig_undo_rewrite_requested = Signal(str)
    sig_redo_rewrite_requested = Signal(str)

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
        self._rows: dict[str, AnimatedRow] = {}
        self._selected_id = ""
        self._hovered_id = ""
        self._hovered_index: QPersistentModelIndex | None = None
        self._editor_index: QPersistentModelIndex | None = None
        self._stick_to_bottom = True
        self._frame_timer = QTimer(self)
        self._frame_timer.setInterval(max(FRAME_MS, int(FADE_STEP_S * 1000)))
        self._frame_timer.timeout.connect(self._on_frame_timer_timeout)
        self._replays: dict[str, Any] = {}
        self.image_viewer = None  # the last ImageViewer opened (app.transcript.image_viewer)
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

    def animated_row(self, message_id: str) -> AnimatedRow | None:
        return self._rows.get(message_id)

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

    def _row_for(self, message_id: str, replay: bool = False) -> AnimatedRow | None:
        row = self._rows.get(message_id)
        if row is not None and row.index.isValid():
            return row
        index = self.index_of_message(message_id)
        if not index.isValid():
            return None
        row = AnimatedRow(QPersistentModelIndex(index), message_id, replay)
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

    def _refresh_row(self, row: AnimatedRow) -> None:
        """Repaints the row, or re-lays the list out when the row's height changed."""
        index = QModelIndex(row.index)
        if not index.isValid():
            return
        width = self._delegate.content_width("assistant", self.viewport().width())
        height = self._delegate.canvas_block_height(row, width) if row.animation.has_draft else 0.0
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
        # QListView re-lays out every row on any dataChanged; a new draft (a change of the DRAFT
        # role alone) only needs its row repainted, so it never reaches it (the list is laid out
        # again when the row's height changes).
        if list(roles) == [MessageRole.DRAFT] and top_left.row() == bottom_right.row() and self._apply_new_draft(top_left):
            return
        self._on_model_data_changed(top_left, bottom_right, roles)
        super().dataChanged(top_left, bottom_right, roles)

    def _apply_new_draft(self, index: QModelIndex) -> bool:
        message = message_of(index)
        if message is None or message.status != "streaming" or message.draft is None:
            return False
        row = self._rows.get(message.id)
        if row is not None and row.replay:
            return False
        self.apply_draft(message.id, message.draft)
        return True

    def _on_model_data_changed(self, top_left: QModelIndex, bottom_right: QModelIndex, roles=()) -> None:
        for number in range(top_left.row(), bottom_right.row() + 1):
            index = self.model().index(number, 0)
            message = message_of(index)
            if message is None:
                continue
            draft = message.draft
            row = self._rows.get(message.id)
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
        self.stop_all_replays()  # another chat opened: a paused replay has no timer to notice
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
                self.stop_replay(message_id)
                self._rows.pop(message_id, None)
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
        playback = Playback(player, timer)
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

    def replay_playback(self, message_id: str) -> Playback | None:
        """The replay of a message in progress: its player, the frame on screen, whether it plays."""
        return self._replays.get(message_id)

    def seek_replay(self, message_id: str, index: int) -> None:
        """Shows recorded frame `index` now; a playing replay goes on from there."""
        playback = self._replays.get(message_id)
        if playback is None or not playback.player.frames:
            return
        self._show_replay_frame(message_id, max(0, min(index, len(playback.player.frames) - 1)))
        if playback.playing:
            self._schedule_next_frame(playback)

    def set_replay_playing(self, message_id: str, playing: bool) -> None:
        """Pauses or resumes a replay (resuming at the end starts it over)."""
        playback = self._replays.get(message_id)
        if playback is None or playback.playing == playing:
            return
        playback.playing = playing
        if not playing:
            playback.timer.stop()
        elif playback.position >= len(playback.player.frames) - 1:
            self.seek_replay(message_id, 0)
        else:
            self._schedule_next_frame(playback)
        self.replay_state_changed.emit(message_id)

    def set_replay_speed(self, message_id: str, speed: float) -> None:
        playback = self._replays.get(message_id)
        if playback is not None and speed > 0:
            playback.player.speed = speed
            if playback.playing and playback.position >= 0:
                self._schedule_next_frame(playback)

    def _schedule_next_frame(self, playback: Playback) -> None:
        frames = playback.player.frames
        last = playback.position >= len(frames) - 1
        delay_s = REPLAY_END_HOLD_S if last else (playback.player.hold_s(playback.position) if playback.position >= 0 else 0.0)
        playback.timer.start(int(delay_s * 1000))

    def _show_replay_frame(self, message_id: str, index: int) -> None:
        playback = self._replays[message_id]
        row = self._rows.get(message_id)
        if row is None:
            return
        frame = playback.player.frames[index]
        playback.position = index
        row.committed_text = frame.committed_text
        if frame.kind == "draft":
            self.apply_draft(message_id, frame, replay=True)
        else:
            row.animation.clear()
            row.layout, row.layout_key, row.height = None, (), 0.0
            self._refresh_row(row)
        self.replay_progressed.emit(message_id, index + 1)

    def _on_replay_timer_timeout(self, message_id: str) -> None:
        playback = self._replays.get(message_id)
        row = self._rows.get(message_id)
        if playback is None or row is None:
            self.stop_replay(message_id)
            return
        if playback.position >= len(playback.player.frames) - 1:
            self.stop_replay(message_id)  # played to the end (and held there a moment)
            return
        self._show_replay_frame(message_id, playback.position + 1)
        self._schedule_next_frame(playback)

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
