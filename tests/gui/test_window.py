"""The real window on the real worker (tiny model): a reply animates its open canvas and ends as
the engine's text; stop, regenerate, edit-and-resend, search, persistence across a restart of the
app, the worker killed mid-reply, and closing mid-reply."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal

import psutil
import pytest
from PySide6.QtCore import Qt

from app.transcript.canvas_paint import NOISE_GLYPH
from app.worker.engine_client import EngineClient, EngineState
from app.window.main_window import MainWindow
from app.chat.store import ChatStore
from tests.conftest import REPO_ROOT, timeout_ms
from tests.gui.window_helpers import (
    TEST_SETTINGS,
    CanvasRecorder,
    expected_layout_text,
    ignore_offscreen_limits,
    send_and_wait,
    wait_model_loaded,
)

pytestmark = [pytest.mark.slow, ignore_offscreen_limits]

# Three 16-token canvases, so a reply can be stopped or killed with a canvas committed.
REPLY = "Each block starts as noise and **settles** into text, one canvas after another."
SECOND_REPLY = "A second answer, written again from noise."


@pytest.fixture
def open_window(qtbot, tiny_model_dir, monkeypatch):
    """Builds MainWindows on the isolated home's database; closes them and their workers after."""
    windows: list[tuple[MainWindow, ChatStore]] = []

    def open_(reply: str = REPLY, step_delay: str = "0.03", settings=TEST_SETTINGS, start: bool = True) -> MainWindow:
        monkeypatch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", reply)
        monkeypatch.setenv("CANVAS_CHAT_TEST_STEP_DELAY", step_delay)
        store = ChatStore()
        client = EngineClient(restart_delays_s=(0.05, 0.1, 0.2))
        window = MainWindow(settings, store, client)
        window.resize(1000, 700)
        window.show()
        qtbot.waitExposed(window)
        windows.append((window, store))
        if start:
            assert window.start_engine(str(tiny_model_dir))
            wait_model_loaded(qtbot, window)
        return window

    yield open_
    for window, store in windows:
        window.close()
        window.client.shutdown()
        store.close()
        window.deleteLater()


def test_reply_animates_the_open_canvas_then_shows_the_engines_text(open_window, qtbot):
    window = open_window()
    recorder = CanvasRecorder(window)
    done_events = []
    window.client.generation_finished.connect(done_events.append)
    states = []
    window.client.state_changed.connect(states.append)

    message_id = send_and_wait(qtbot, window, "Tell me how you write.")

    # The open canvas was drawn step by step, and it changed across steps.
    assert len(recorder.frames) >= 3, "too few drafts reached the view"
    assert len({(f.canvas_index, f.step_index) for f in recorder.frames}) >= 3
    assert len({f.layout_text for f in recorder.frames}) >= 3, "the drawn canvas did not change across steps"
    assert any(0 < sum(f.settled) < len(f.settled) for f in recorder.frames), "never a half-settled canvas"
    assert {f.canvas_index for f in recorder.frames} >= {0, 1}
    for frame in recorder.frames:
        # Unsettled positions are neutral glyphs: never the noise token's own text.
        for segment, piece, settled in zip(frame.segments, frame.pieces, frame.settled):
            assert segment.text == (piece if settled else NOISE_GLYPH)
        assert frame.layout_text == expected_layout_text(frame.pieces, frame.settled)
        assert frame.counter_text == f"canvas {frame.canvas_index + 1} \u00b7 step {frame.step_index + 1}/8"
    assert EngineState.GENERATING in states

    # The finished reply is exactly what the engine produced, drawn as normal text with stats.
    (done,) = done_events
    message = window.controller.transcript.get(message_id)
    assert message.content == done.text == REPLY
    assert message.status == "finished"
    assert message.stats["tokens_per_s"] > 0
    view = window.transcript_view
    assert not view.is_streaming(message_id)
    assert not view.frame_timer_active()
    assert message.replay, "the reply's drafts were not recorded"
    window.transcript_view.select_message(message_id)
    editor = view.indexWidget(view.index_of_message(message_id))
    assert editor is not None and "settles" in editor.toPlainText(), "the reply's text is not selectable"


def test_only_the_streaming_row_animates_and_the_timer_stops(open_window, qtbot):
    window = open_window(step_delay="0.05")
    send_and_wait(qtbot, window, "First question.")
    view = window.transcript_view
    earlier = [m.id for m in window.controller.transcript]
    paints = view.delegate.paint_counts
    before = {message_id: paints[message_id] for message_id in earlier}
    with qtbot.waitSignal(window.client.draft_received, timeout=timeout_ms(60)):
        streaming_id = window.send("Second question.")
    assert view.frame_timer_active(), "a settling token should start the fade timer"
    with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(60)):
        pass
    streaming_paints = paints[streaming_id]
    others = max(paints[message_id] - before[message_id] for message_id in earlier)
    assert streaming_paints > 10
    assert others < streaming_paints / 2, (others, streaming_paints)
    qtbot.waitUntil(lambda: not view.frame_timer_active(), timeout=timeout_ms(5))


def test_stop_keeps_the_partial_reply_marked_stopped(open_window, qtbot):
    window = open_window(step_delay="0.08")
    with qtbot.waitSignal(window.client.canvas_committed, timeout=timeout_ms(60)) as commit:
        window.composer.set_text("Write something long.")
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert window.composer.stop_button.isEnabled() and not window.composer.send_button.isEnabled()
    with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(30)) as finished:
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Escape)
    message_id, status = finished.args
    assert status == "stopped"
    message = window.controller.transcript.get(message_id)
    assert message.content.startswith(commit.args[0].text) and len(message.content) < len(REPLY)
    assert window.store.get_message(message_id).status == "stopped"
    assert window.composer.send_button.isEnabled() is False  # nothing typed
    assert window.composer.regenerate_button.isEnabled()


def test_regenerate_replaces_the_last_reply(open_window, qtbot):
    window = open_window()
    first_id = send_and_wait(qtbot, window, "Question.")
    with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(60)) as finished:
        qtbot.keyClick(window, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    second_id, status = finished.args
    assert status == "finished" and second_id != first_id
    transcript = window.controller.transcript
    assert [m.role for m in transcript] == ["user", "assistant"]
    assert transcript.get(first_id) is None and transcript[1].content == REPLY
    assert [m.id for m in window.store.messages(transcript.conversation_id)] == [transcript[0].id, second_id]


def test_edit_and_resend_replaces_the_message_and_what_followed(open_window, qtbot):
    window = open_window()
    send_and_wait(qtbot, window, "Frist question with a typo.")
    send_and_wait(qtbot, window, "Follow-up.")
    transcript = window.controller.transcript
    first_user = transcript[0]
    window.transcript_view.sig_edit_requested.emit(first_user.id)
    assert window.composer.editing_message_id == first_user.id
    assert window.composer.text() == "Frist question with a typo."
    assert window.composer.edit_bar.isVisible()
    with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(60)):
        window.composer.set_text("First question, fixed.")
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert [(m.role, m.content) for m in transcript] == [("user", "First question, fixed."), ("assistant", REPLY)]
    stored = window.store.messages(transcript.conversation_id)
    assert [m.content for m in stored] == ["First question, fixed.", REPLY]
    assert not window.composer.editing_message_id and not window.composer.edit_bar.isVisible()


def test_search_filters_conversations_by_title_and_message_text(open_window, qtbot):
    window = open_window()
    send_and_wait(qtbot, window, "Tell me about pelicans.")
    pelican_id = window.controller.current_conversation_id
    qtbot.keyClick(window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    send_and_wait(qtbot, window, "Something about rivers.")
    river_id = window.controller.current_conversation_id
    window.controller.rename_conversation(river_id, "Geography")
    sidebar = window.sidebar
    assert set(sidebar.visible_ids()) == {pelican_id, river_id}

    qtbot.keyClick(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert sidebar.search_field.hasFocus()
    qtbot.keyClicks(sidebar.search_field, "pelican")
    qtbot.waitUntil(lambda: sidebar.visible_ids() == [pelican_id], timeout=timeout_ms(5))
    sidebar.search_field.setText("geograph")  # a title
    qtbot.waitUntil(lambda: sidebar.visible_ids() == [river_id], timeout=timeout_ms(5))
    sidebar.search_field.setText("settles")  # text of both replies
    qtbot.waitUntil(lambda: set(sidebar.visible_ids()) == {pelican_id, river_id}, timeout=timeout_ms(5))
    sidebar.search_field.setText("zebra")
    qtbot.waitUntil(lambda: sidebar.visible_ids() == [], timeout=timeout_ms(5))
    assert sidebar.empty_label.isVisible()
    sidebar.search_field.clear()
    qtbot.waitUntil(lambda: len(sidebar.visible_ids()) == 2, timeout=timeout_ms(5))


def test_delete_with_undo_and_rename_in_place(open_window, qtbot):
    window = open_window(start=False)
    window.new_chat()
    first = window.controller.current_conversation_id
    window.new_chat()
    second = window.controller.current_conversation_id
    window.delete_chat(second)
    assert window.sidebar.visible_ids() == [first]
    assert window.sidebar.undo_bar.isVisible()
    qtbot.mouseClick(window.sidebar.undo_button, Qt.MouseButton.LeftButton)
    assert set(window.sidebar.visible_ids()) == {first, second}
    assert window.store.get_conversation(second) is not None

    window.sidebar.select_conversation(first)
    window.sidebar.rename_current()
    editor = window.sidebar.list_view.focusWidget()
    editor.setText("Renamed chat")
    qtbot.keyClick(editor, Qt.Key.Key_Return)  # the delegate commits on the next event loop turn
    qtbot.waitUntil(lambda: window.controller.conversations.get(first).title == "Renamed chat", timeout=timeout_ms(5))
    assert window.store.get_conversation(first).title == "Renamed chat"


def test_conversations_survive_an_app_restart_on_the_same_database(open_window, qtbot):
    window = open_window()
    send_and_wait(qtbot, window, "Remember me.")
    conversation_id = window.controller.current_conversation_id
    before = [(m.id, m.role, m.content, m.status) for m in window.controller.transcript]
    database = window.store.path
    window.close()
    window.store.close()

    second = open_window(start=False)
    assert second.store.path == database
    assert conversation_id in second.sidebar.visible_ids()
    second.sidebar.list_view.setCurrentIndex(second.sidebar.proxy.index(second.sidebar.visible_ids().index(conversation_id), 0))
    assert second.controller.current_conversation_id == conversation_id
    assert [(m.id, m.role, m.content, m.status) for m in second.controller.transcript] == before
    assert second.transcript_view.model().rowCount() == 2


def test_worker_killed_mid_reply_keeps_it_interrupted_and_restart_works(open_window, qtbot, caplog):
    window = open_window(step_delay="0.08")
    window.client.auto_restart = False
    with qtbot.waitSignal(window.client.canvas_committed, timeout=timeout_ms(60)):
        message_id = window.send("Go on.")
    pid = window.client.worker_pid
    with caplog.at_level(logging.WARNING, logger="canvas_chat.engine_client"):
        with qtbot.waitSignals([window.client.worker_crashed, window.controller.reply_finished], timeout=timeout_ms(30)):
            os.kill(pid, signal.SIGKILL)
    message = window.controller.transcript.get(message_id)
    assert message.status == "interrupted" and message.content, "the committed canvas was lost"
    assert window.store.get_message(message_id).status == "interrupted"
    assert window.banner.isVisible() and window.banner.kind == "crash"
    # How it ended, in words, and what the worker was doing: not just "engine worker started".
    assert window.banner.title.text() == "The engine stopped unexpectedly (killed by SIGKILL)."
    log_text = window.banner.log_view.toPlainText()
    assert "loaded " in log_text and "generating a reply" in log_text, log_text
    assert window.engine_status.label.text().startswith("Engine crashed")
    assert not window.transcript_view.is_streaming(message_id)

    with qtbot.waitSignal(window.client.model_loaded, timeout=timeout_ms(60)):
        qtbot.mouseClick(window.banner.restart_button, Qt.MouseButton.LeftButton)
    assert not window.banner.isVisible()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    next_id = send_and_wait(qtbot, window, "Are you back?")
    assert window.controller.transcript.get(next_id).content == REPLY


def test_closing_mid_reply_stops_the_worker(open_window, qtbot):
    window = open_window(step_delay="0.1")
    with qtbot.waitSignal(window.client.draft_received, timeout=timeout_ms(60)):
        message_id = window.send("Long answer please.")
    pid = window.client.worker_pid
    assert pid and psutil.pid_exists(pid)
    window.close()
    assert window.client.worker_pid is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert window.store.get_message(message_id).status in ("interrupted", "stopped")


def test_reduced_motion_draws_committed_text_only(open_window, qtbot):
    window = open_window(settings=dataclasses.replace(TEST_SETTINGS, reduced_motion=True))
    view = window.transcript_view
    timer_seen = []
    window.client.draft_received.connect(lambda _draft: timer_seen.append(view.frame_timer_active()))
    send_and_wait(qtbot, window, "Calm, please.")
    assert timer_seen and not any(timer_seen), "reduced motion must not run the fade timer"


def test_replay_plays_the_recorded_drafts_then_restores_the_reply(open_window, qtbot):
    window = open_window(settings=dataclasses.replace(TEST_SETTINGS, replay_speed=8.0))
    message_id = send_and_wait(qtbot, window, "Show me again.")
    view = window.transcript_view
    player = window.controller.replay_player(message_id)
    drawn = []

    def on_progress(replayed_id, frames_shown):
        snapshot = view.streaming_snapshot(replayed_id)
        row = view.animated_row(replayed_id)
        drawn.append((frames_shown, row.committed_text, snapshot.drawn_text, snapshot.counter_text))

    view.replay_progressed.connect(on_progress)
    with qtbot.waitSignal(view.replay_finished, timeout=timeout_ms(30)):
        assert window.replay(message_id)
        assert view.is_replaying(message_id)
    assert [frames for frames, *_ in drawn] == list(range(1, len(player.frames) + 1))
    assert drawn[0][1] == "" and NOISE_GLYPH in drawn[0][2]
    assert len({text for _, _, text, _ in drawn}) > 3
    assert drawn[-1][1] == REPLY
    assert not view.is_replaying() and not view.is_streaming(message_id)
    assert window.controller.transcript.get(message_id).content == REPLY


# Special tokens inside a reply: the model predicts pad and markup ids too (a forced reply makes
# the tiny model settle on them), over two canvases.
SPECIAL_REPLY = "Noise<pad><pad> settles<|channel> into<mask> text<pad>, one<|image|> canvas<unk> at<channel|> a time<pad>."


def test_no_draft_replay_frame_or_committed_text_shows_a_special_token(open_window, qtbot, tiny_model_dir):
    from transformers import AutoTokenizer

    from app.chat.replay import decode_frames

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    specials = [token for token in tokenizer.all_special_tokens if token]
    assert {"<pad>", "<|channel>", "<mask>"} <= set(specials)
    window = open_window(reply=SPECIAL_REPLY, step_delay="0")
    recorder = CanvasRecorder(window)
    drafts, commits = [], []
    window.client.draft_received.connect(drafts.append)
    window.client.canvas_committed.connect(commits.append)
    message_id = send_and_wait(qtbot, window, "Say it with special tokens.")
    # The special ids really reached the drafts: settled positions with nothing to show.
    assert any(flag and piece == "" for d in drafts for piece, flag in zip(d.pieces, d.settled))
    message = window.controller.transcript.get(message_id)
    replay_frames = list(decode_frames(message.replay))
    assert any(f.kind == "draft" for f in replay_frames) and any(f.kind == "commit" for f in replay_frames)

    shown = [message.content]
    shown += [d.text for d in drafts] + ["".join(d.pieces) for d in drafts]
    shown += [c.text for c in commits] + [c.reply_text for c in commits]
    shown += [f.layout_text for f in recorder.frames] + ["".join(s.text for s in f.segments) for f in recorder.frames]
    shown += ["".join(f.pieces) + f.committed_text for f in replay_frames]
    for text in shown:
        leaked = [token for token in specials if token in text]
        assert not leaked, f"{leaked} shown in {text!r}"
    assert message.content == "Noise settles into text, one canvas at a time."


def test_status_bar_says_no_model_after_a_load_fails(open_window, qtbot, tiny_model_dir, tmp_path, caplog):
    """A model that fails to load leaves the worker with none: the status bar must not keep
    saying "Ready" with the previous model's name."""
    import shutil

    window = open_window()
    assert window.engine_status.label.text() == "Ready" and window.engine_status.model_label.text()
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text("{ not json")
    with caplog.at_level(logging.WARNING, logger="canvas_chat.engine_client"):
        with qtbot.waitSignal(window.client.error_received, timeout=timeout_ms(60)) as failed:
            window.start_engine(str(broken))
    assert failed.args[0].code == "model_broken"
    assert window.client.model_info is None
    assert window.engine_status.label.text() == "No model loaded"
    assert window.engine_status.model_label.text() == ""


DEMO_MODEL = str(REPO_ROOT / "resources" / "demo-model")


def test_the_demo_answers_three_questions_of_different_skills_in_one_chat(qtbot, monkeypatch):
    """The shipped demo model in the real window and worker: a follow-up in the same chat is
    answered as well as the first question (the worker reuses the chat's KV cache)."""
    from app.window.main_window import DEMO_EXAMPLE_PROMPTS
    from app.settings import Settings

    monkeypatch.delenv("CANVAS_CHAT_TEST_FORCE_REPLY", raising=False)
    store = ChatStore()
    window = MainWindow(Settings(seed=0), store, EngineClient())
    try:
        window.resize(1000, 700)
        window.show()
        qtbot.waitExposed(window)
        assert window.start_engine(DEMO_MODEL)
        wait_model_loaded(qtbot, window, seconds=180)
        assert window.client.model_info.is_demo
        # The first question by clicking the empty chat's example, the others typed.
        with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(120)) as first:
            window.empty_label.linkActivated.emit(f"ask:{DEMO_EXAMPLE_PROMPTS.index('What is the capital of Peru?')}")
        replies = [first.args[0]]
        replies.append(send_and_wait(qtbot, window, "Reverse the words: red green blue", seconds=120))
        replies.append(send_and_wait(qtbot, window, "What is 3 + 4?", seconds=120))
        shown = [window.controller.transcript.get(message_id) for message_id in replies]
        assert [(m.status, m.content) for m in shown] == [
            ("finished", "The capital of Peru is Lima."),
            ("finished", "blue green red"),
            ("finished", "3 + 4 = 7."),
        ]
        assert len(window.controller.conversations) == 1
    finally:
        window.close()
        window.client.shutdown()
        store.close()
        window.deleteLater()
