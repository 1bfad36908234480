"""The streaming-animation state of the transcript's live rows: the open canvas of a streaming or
replaying reply, its replay playback, and what a test or benchmark can read of it."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QPersistentModelIndex, QTimer

from app.chat.replay import ReplayPlayer
from app.transcript.canvas_paint import CanvasAnimation, CanvasSegment


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


class AnimatedRow:
    """A streaming or replaying row: its canvas animation and the layout the delegate made of it."""

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
        self.height = 0.0
        self.paints = 0


class Playback:
    """A replay in progress: the recording, the frame on screen, and the timer that shows the next."""

    def __init__(self, player: ReplayPlayer, timer: QTimer):
        self.player = player
        self.timer = timer
        self.position = -1  # index of the frame on screen (-1: none yet)
        self.playing = True
