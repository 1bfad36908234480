"""The Replay scrubber on the real window and worker (tiny model): the slider shows step k of
canvas c exactly as the engine sent it (pieces, settled, entropy tint, step counter), the keys
step through the recording, play/pause and speed drive it, and it closes with the replay."""

from __future__ import annotations

import dataclasses

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor

from app.chat.messages import Message
from app.chat.replay import ReplayRecorder
from app.chat.store import ChatStore
from app.transcript.canvas_paint import NOISE_CELL, _display
from app.window.main_window import MainWindow
from app.worker.engine_client import EngineClient
from engine.protocol import CanvasCommitted, Draft
from tests.conftest import timeout_ms
from tests.gui.window_helpers import TEST_SETTINGS, ignore_offscreen_limits, send_and_wait, wait_model_loaded

pytestmark = [pytest.mark.slow, ignore_offscreen_limits]

# Three 16-token canvases of the tiny model, 8 steps each.
REPLY = "Each block starts as noise and **settles** into text, one canvas after another."


@pytest.fixture
def window(qtbot, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", REPLY)
    monkeypatch.setenv("CANVAS_CHAT_TEST_STEP_DELAY", "0.01")
    store = ChatStore()
    client = EngineClient()
    win = MainWindow(dataclasses.replace(TEST_SETTINGS, replay_speed=1.0), store, client)
    win.resize(1000, 700)
    win.show()
    qtbot.waitExposed(win)
    assert win.start_engine(str(tiny_model_dir))
    wait_model_loaded(qtbot, win)
    yield win
    win.close()
    client.shutdown()
    store.close()
    win.deleteLater()


def _shown_state(window, message_id):
    row = window.transcript_view.animated_row(message_id)
    animation = row.animation
    return (animation.canvas_index, animation.step_index), animation.pieces, animation.settled, animation.entropy


def _tints_follow_entropy(window, message_id, draft) -> None:
    """Every settled run of the drawn canvas has the tint of its positions' entropy bucket."""
    view = window.transcript_view
    row = view.animated_row(message_id)
    colors = view.delegate.colors
    width = view.delegate.content_width("assistant", view.viewport().width())
    layout = view.delegate.canvas_layout(row, width, now=1e12)  # long after any fade
    expected: list[str | None] = []
    for piece, settled, bucket in zip(draft.pieces, draft.settled, draft.entropy):
        shown = _display(piece) if settled else NOISE_CELL
        colour = (colors.entropy_tints[bucket] if bucket > 0 else colors.text) if settled else None
        expected.extend([colour] * len(shown))
    checked = 0
    for format_range in layout.formats():
        colour = format_range.format.foreground().color()
        for offset in range(format_range.start, format_range.start + format_range.length):
            if offset < len(expected) and expected[offset] is not None:
                assert colour.rgb() == QColor(expected[offset]).rgb(), (offset, expected[offset])
                checked += 1
    assert checked > 0 and len(layout.text()) == len(expected)


def test_the_scrubber_shows_step_k_of_canvas_c_as_the_engine_sent_it(window, qtbot):
    drafts = {}
    window.client.draft_arrived.connect(lambda draft: drafts.setdefault((draft.canvas_index, draft.step_index), draft))
    message_id = send_and_wait(qtbot, window, "Show me again.")
    canvases = sorted({canvas for canvas, _ in drafts})
    assert len(canvases) >= 2, "the reply should take two canvases or more"
    bar, view = window.replay_bar, window.transcript_view
    assert not bar.isVisible()

    assert window.replay(message_id)
    playback = view.replay_playback(message_id)
    assert bar.isVisible() and bar.slider.hasFocus()
    assert bar.slider.maximum() == len(playback.player.frames) - 1

    canvas, step = canvases[1], 3
    index = playback.player.index_of(canvas, step)
    bar.seek(index)
    assert not playback.playing, "scrubbing pauses the replay"
    draft = drafts[(canvas, step)]
    assert _shown_state(window, message_id) == ((canvas, step), tuple(draft.pieces), tuple(draft.settled), tuple(draft.entropy))
    snapshot = view.streaming_snapshot(message_id)
    assert snapshot.counter_text == f"canvas {canvas + 1} \u00b7 step {step + 1}/8"
    assert bar.step_label.text() == f"canvas {canvas + 1} \u00b7 step {step + 1}/8 \u00b7 frame {index + 1}/{len(playback.player.frames)}"
    assert view.animated_row(message_id).committed_text == playback.player.frames[index].committed_text != ""
    _tints_follow_entropy(window, message_id, draft)

    # Right and Left: one recorded step; Home and End: the first and the last frame.
    qtbot.keyClick(bar.slider, Qt.Key.Key_Right)
    next_key = (canvas, step + 1)
    assert _shown_state(window, message_id)[0] == next_key
    assert _shown_state(window, message_id)[1] == tuple(drafts[next_key].pieces)
    _tints_follow_entropy(window, message_id, drafts[next_key])
    qtbot.keyClick(bar.slider, Qt.Key.Key_Left)
    assert _shown_state(window, message_id)[:2] == ((canvas, step), tuple(draft.pieces))
    qtbot.keyClick(bar.slider, Qt.Key.Key_Home)
    assert _shown_state(window, message_id)[:2] == ((0, 0), tuple(drafts[(0, 0)].pieces))
    assert view.animated_row(message_id).committed_text == ""
    qtbot.keyClick(bar.slider, Qt.Key.Key_End)
    assert playback.position == len(playback.player.frames) - 1
    assert view.animated_row(message_id).committed_text == REPLY

    # Space plays (from the start again, after the end) at the chosen speed, to the end.
    bar.speed_box.setCurrentIndex(bar.speed_box.findData(8.0))
    assert playback.player.speed == 8.0
    with qtbot.waitSignal(view.replay_finished, timeout=timeout_ms(30)):
        qtbot.keyClick(bar.slider, Qt.Key.Key_Space)
        assert playback.playing and bar.play_button.text() == "Pause"
    assert not bar.isVisible() and not view.is_replaying()
    assert window.controller.transcript.get(message_id).content == REPLY


def test_pause_holds_the_frame_and_stop_closes_the_bar(window, qtbot):
    message_id = send_and_wait(qtbot, window, "Once more.")
    bar, view = window.replay_bar, window.transcript_view
    assert window.replay(message_id)
    with qtbot.waitSignal(view.replay_progressed, timeout=timeout_ms(10)):
        pass
    bar.play_button.click()
    playback = view.replay_playback(message_id)
    assert not playback.playing and bar.play_button.text() == "Play"
    assert not playback.timer.isActive(), "a paused replay must not run its timer"
    bar.close_button.click()
    assert not bar.isVisible() and not view.is_replaying(message_id)


def _synthetic_reply():
    """Two 6-token canvases over 4 steps with every entropy bucket in use (the tiny model's forced
    replies are certain: bucket 0 everywhere)."""
    words = ["Noise", " turns", " into", " text", " step", " by"]
    drafts, commits, committed = [], [], ""
    for canvas in range(2):
        for step in range(4):
            settled = [position % 4 <= step for position in range(6)]
            entropy = [(position + step + canvas) % 4 if settled[position] else 3 for position in range(6)]
            pieces = [words[p] if settled[p] else "?" for p in range(6)]
            drafts.append(Draft("r", canvas, step, 4, "".join(pieces), pieces, settled, entropy))
        committed += "".join(words)
        commits.append(CanvasCommitted("r", canvas, "".join(words), committed, 6, 4))
    return drafts, commits, committed


@pytest.fixture
def offline_window(qtbot):
    store = ChatStore()
    client = EngineClient()
    win = MainWindow(TEST_SETTINGS, store, client)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close()
    client.shutdown()
    store.close()
    win.deleteLater()


def test_the_entropy_tint_and_counter_follow_the_scrubber(offline_window, qtbot):
    window = offline_window
    drafts, commits, committed = _synthetic_reply()
    recorder = ReplayRecorder()
    for canvas in range(2):
        for draft in drafts[canvas * 4 : canvas * 4 + 4]:
            recorder.record_draft(draft)
        recorder.record_commit(commits[canvas])
    conversation = window.store.create_conversation("Replayed")
    window.store.add_message(Message(role="user", content="Go", conversation_id=conversation.id))
    reply = Message(role="assistant", content=committed, conversation_id=conversation.id, replay=recorder.finish())
    window.store.add_message(reply)
    window.controller.conversations.insert(0, conversation)
    window.controller.open_conversation(conversation.id)
    assert window.replay(reply.id)
    bar = window.replay_bar
    player = window.transcript_view.replay_playback(reply.id).player
    for draft in drafts:
        bar.seek(player.index_of(draft.canvas_index, draft.step_index))
        assert _shown_state(window, reply.id) == (
            (draft.canvas_index, draft.step_index), tuple(draft.pieces), tuple(draft.settled), tuple(draft.entropy)
        )
        assert window.transcript_view.streaming_snapshot(reply.id).counter_text == (
            f"canvas {draft.canvas_index + 1} \u00b7 step {draft.step_index + 1}/4"
        )
        _tints_follow_entropy(window, reply.id, draft)
    bar.stop()


def test_opening_another_chat_ends_a_paused_replay(offline_window, qtbot):
    window = offline_window
    drafts, commits, committed = _synthetic_reply()
    recorder = ReplayRecorder()
    for draft in drafts[:4]:
        recorder.record_draft(draft)
    recorder.record_commit(commits[0])
    conversation = window.store.create_conversation("Replayed")
    reply = Message(role="assistant", content=committed, conversation_id=conversation.id, replay=recorder.finish())
    window.store.add_message(reply)
    window.controller.conversations.insert(0, conversation)
    window.controller.open_conversation(conversation.id)
    assert window.replay(reply.id)
    window.replay_bar.seek(2)
    assert not window.transcript_view.replay_playback(reply.id).playing
    with qtbot.waitSignal(window.transcript_view.replay_finished):
        window.new_chat()
    assert not window.replay_bar.isVisible() and not window.transcript_view.is_replaying()
