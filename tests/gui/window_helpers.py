"""Helpers for the window tests: a MainWindow on the real worker, and a recorder of what the
transcript view drew for the streaming row at every applied draft."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from app.transcript.canvas_paint import NOISE_CELL
from app.settings import Settings
from tests.conftest import timeout_ms

# The offscreen platform plugin cannot pass a top-level window's size limits on, nor raise a
# window; Qt warns once per window. These are limits of the test platform, not of the app.
OFFSCREEN_LIMITS = "This plugin does not support (propagateSizeHints|raise)"
ignore_offscreen_limits = pytest.mark.qt_log_ignore(OFFSCREEN_LIMITS)

# The tiny model's own generation config: 8 denoising steps per 16-token canvas.
TEST_SETTINGS = Settings(max_denoising_steps=8, max_new_tokens=64, seed=7)


@dataclasses.dataclass
class DrawnCanvas:
    canvas_index: int
    step_index: int
    pieces: tuple[str, ...]
    settled: tuple[bool, ...]
    segments: list[Any]
    layout_text: str
    counter_text: str


class CanvasRecorder:
    """Records the streaming row's drawn state each time the transcript model changes."""

    def __init__(self, window) -> None:
        self.window = window
        self.frames: list[DrawnCanvas] = []
        window.transcript_model.dataChanged.connect(self._on_model_data_changed)

    def _on_model_data_changed(self, *_args) -> None:
        view = self.window.transcript_view
        snapshot = view.streaming_snapshot()
        if snapshot is None or snapshot.canvas_index < 0:
            return
        row = view.animated_row(snapshot.message_id)
        layout = view.delegate.canvas_layout(row, view.delegate.content_width("assistant", view.viewport().width()), 0.0)
        frame = DrawnCanvas(
            canvas_index=snapshot.canvas_index,
            step_index=snapshot.step_index,
            pieces=row.animation.pieces,
            settled=row.animation.settled,
            segments=snapshot.segments,
            layout_text=layout.text() if layout is not None else "",
            counter_text=snapshot.counter_text,
        )
        if not self.frames or (self.frames[-1].canvas_index, self.frames[-1].step_index, self.frames[-1].settled) != (
            frame.canvas_index,
            frame.step_index,
            frame.settled,
        ):
            self.frames.append(frame)


def expected_layout_text(pieces, settled) -> str:
    """What the canvas must show: settled pieces as text, every other position a neutral cell."""
    from app.transcript.canvas_paint import _display

    return "".join(_display(piece) if flag else NOISE_CELL for piece, flag in zip(pieces, settled))


def wait_model_loaded(qtbot, window, seconds: float = 90) -> None:
    if window.client.model_info is not None:
        return
    with qtbot.waitSignal(window.client.model_loaded, timeout=timeout_ms(seconds)):
        pass


def send_and_wait(qtbot, window, text: str, seconds: float = 90) -> str:
    """Types a message into the composer, presses Enter, waits for the reply; returns its id."""
    from PySide6.QtCore import Qt

    started: list[str] = []
    window.controller.reply_started.connect(started.append)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(seconds)):
        window.composer.set_text(text)
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    window.controller.reply_started.disconnect(started.append)
    assert started, "the composer did not send"
    return started[-1]
