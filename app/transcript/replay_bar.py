"""The Replay scrubber under the transcript: a slider over every recorded step of every canvas,
play/pause, speed, and the keys Left/Right (a step), PageUp/PageDown, Home/End and Space."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSlider, QToolButton, QWidget

from app.transcript.view import TranscriptView

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _speed_text(speed: float) -> str:
    return f"{speed:g}\u00d7"


class ReplayBar(QWidget):
    """Shown while a reply replays; drives `TranscriptView`'s replay of that message."""

    def __init__(self, view: TranscriptView, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("replayBar")
        self.view = view
        self.message_id = ""
        self._following = False  # the slider is being moved to follow playback, not by the user

        self.play_button = QToolButton(self)
        self.play_button.setObjectName("replayPlayButton")
        self.play_button.setAccessibleName("Play or pause the replay")
        self.play_button.clicked.connect(self.toggle_playing)
        self.slider = QSlider(Qt.Orientation.Horizontal, self)
        self.slider.setObjectName("replaySlider")
        self.slider.setAccessibleName("Replay position")
        self.slider.setAccessibleDescription("Every recorded denoising step of every canvas. Left and Right move one step, Home and End go to the start and the end.")
        self.slider.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.slider.setSingleStep(1)
        self.slider.setPageStep(8)
        self.slider.valueChanged.connect(self._on_slider_value_changed)
        self.step_label = QLabel(self)
        self.step_label.setObjectName("replayStepLabel")
        self.step_label.setMinimumWidth(self.fontMetrics().horizontalAdvance("canvas 88 \u00b7 step 888/888 \u00b7 frame 8888/8888"))
        self.speed_box = QComboBox(self)
        self.speed_box.setObjectName("replaySpeedBox")
        self.speed_box.setAccessibleName("Replay speed")
        for speed in SPEEDS:
            self.speed_box.addItem(_speed_text(speed), speed)
        self.speed_box.currentIndexChanged.connect(self._on_speed_box_current_index_changed)
        self.close_button = QToolButton(self)
        self.close_button.setObjectName("replayCloseButton")
        self.close_button.setText("Stop replay")
        self.close_button.setAccessibleName("Stop the replay")
        self.close_button.clicked.connect(self.stop)

        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 4, 12, 4)
        layout.addWidget(QLabel("Replay", self))
        layout.addWidget(self.play_button)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.step_label)
        layout.addWidget(self.speed_box)
        layout.addWidget(self.close_button)
        shortcut = QShortcut(QKeySequence(Qt.Key.Key_Space), self, self.toggle_playing)
        shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)

        view.replay_started.connect(self._on_view_replay_started)
        view.replay_progressed.connect(self._on_view_replay_progressed)
        view.replay_state_changed.connect(self._on_view_replay_state_changed)
        view.replay_finished.connect(self._on_view_replay_finished)
        self.hide()

    # -- what the user does

    def toggle_playing(self) -> None:
        playback = self.view.replay_playback(self.message_id)
        if playback is not None:
            self.view.set_replay_playing(self.message_id, not playback.playing)

    def seek(self, index: int) -> None:
        """Moves the slider (and so the replay) to frame `index`, pausing it, as a user's drag does."""
        if self.slider.value() == index:
            self._on_slider_value_changed(index)  # e.g. frame 0 before the first frame was shown
        else:
            self.slider.setValue(index)

    def stop(self) -> None:
        self.view.stop_replay(self.message_id)

    def _on_slider_value_changed(self, value: int) -> None:
        if self._following or not self.message_id:
            return
        self.view.set_replay_playing(self.message_id, False)  # a scrubbing user wants to look
        self.view.seek_replay(self.message_id, value)

    def _on_speed_box_current_index_changed(self, index: int) -> None:
        if self.message_id:
            self.view.set_replay_speed(self.message_id, float(self.speed_box.itemData(index)))

    # -- what the replay does

    def _on_view_replay_started(self, message_id: str) -> None:
        playback = self.view.replay_playback(message_id)
        if playback is None:
            return
        self.message_id = message_id
        self._following = True
        self.slider.setRange(0, len(playback.player.frames) - 1)
        self.slider.setValue(0)
        speed = playback.player.speed
        nearest = min(range(len(SPEEDS)), key=lambda i: abs(SPEEDS[i] - speed))
        self.speed_box.setCurrentIndex(nearest)
        self._following = False
        self._update_labels()
        self.show()
        self.slider.setFocus(Qt.FocusReason.OtherFocusReason)

    def _on_view_replay_progressed(self, message_id: str, number: int) -> None:
        if message_id != self.message_id:
            return
        self._following = True
        self.slider.setValue(number - 1)
        self._following = False
        self._update_labels()

    def _on_view_replay_state_changed(self, message_id: str) -> None:
        if message_id == self.message_id:
            self._update_labels()

    def _on_view_replay_finished(self, message_id: str) -> None:
        if message_id == self.message_id:
            self.message_id = ""
            self.hide()

    def _update_labels(self) -> None:
        playback = self.view.replay_playback(self.message_id)
        if playback is None:
            return
        self.play_button.setText("Pause" if playback.playing else "Play")
        frames = playback.player.frames
        position = max(0, playback.position)
        frame = frames[position]
        where = (
            f"canvas {frame.canvas_index + 1} \u00b7 step {frame.step_index + 1}/{frame.max_steps}"
            if frame.kind == "draft"
            else f"canvas {frame.canvas_index + 1} committed"
        )
        self.step_label.setText(f"{where} \u00b7 frame {position + 1}/{len(frames)}")
        self.slider.setAccessibleDescription(f"Replay at {where}")


def attach_replay_bar(window) -> ReplayBar:
    """Puts the scrubber right above the window's composer."""
    bar = ReplayBar(window.transcript_view, window)
    layout = window.composer.parentWidget().layout()
    layout.insertWidget(layout.indexOf(window.composer), bar)
    return bar
