"""ConversationController: send/stop/regenerate/edit-and-resend through the real worker, and the
routing of interrupted/error replies, store failures and restarts through the store."""

from __future__ import annotations

import logging

import pytest

from app.chat.messages import DEFAULT_TITLE
from app.chat.qt_models import MessageRole, TranscriptListModel
from app.chat.controller import ConversationController, title_from
from app.worker.engine_client import EngineClient, EngineState
from app.chat.replay import decode_frames
from app.settings import Settings
from app.chat.store import ChatStore
from engine.protocol import CanvasCommitted
from tests.conftest import timeout_ms
from tests.gui.conftest import REPLY, start_and_load

TEST_SETTINGS = Settings(max_new_tokens=128, max_denoising_steps=8, seed=3, system_prompt="Be kind.")


@pytest.fixture
def controller(shared_engine_client, chat_store, qtbot):
    client = shared_engine_client.client
    qtbot.waitUntil(lambda: client.state == EngineState.READY, timeout=timeout_ms(60))
    controller = ConversationController(chat_store, client, TEST_SETTINGS)
    yield controller
    controller.close()
    assert client.state == EngineState.READY, "a test left the shared worker busy"


@pytest.fixture
def offline_controller(qapp, chat_store):
    """A controller whose engine never started: every request fails (asynchronously)."""
    client = EngineClient()
    controller = ConversationController(chat_store, client, TEST_SETTINGS)
    yield controller, client
    controller.close()
    client.deleteLater()


def _send_and_wait(qtbot, controller, text, seconds=60):
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(seconds)) as finished:
        message_id = controller.send(text)
        assert message_id
    assert finished.args[0] == message_id
    return message_id, finished.args[1]


def _stored(controller):
    return [(m.id, m.role, m.status, m.content) for m in controller.store.messages(controller.current_conversation_id)]


def _shown(controller):
    return [(m.id, m.role, m.status, m.content) for m in controller.transcript]


@pytest.mark.slow
def test_send_streams_drafts_and_persists_the_reply(controller, qtbot):
    drafts_seen = []
    controller.transcript.changed.connect(
        lambda index, message, names: drafts_seen.append(message.draft) if "draft" in names and message.draft else None
    )
    # The view repaints a draft without re-laying the list out only when it arrives as a change
    # of the DRAFT role alone.
    model = TranscriptListModel(controller.transcript)
    draft_changes = []
    model.dataChanged.connect(
        lambda top, bottom, roles: draft_changes.append(list(roles)) if top.data(MessageRole.DRAFT) else None
    )
    message_id, status = _send_and_wait(qtbot, controller, "Hello there\nsecond line")
    model.detach()
    assert draft_changes and all(roles == [int(MessageRole.DRAFT)] for roles in draft_changes), draft_changes[:3]
    assert status == "finished"
    reply = controller.transcript.get(message_id)
    assert reply.content == REPLY and reply.draft is None
    assert reply.stats["finish_reason"] == "eos" and reply.stats["tokens_per_s"] > 0
    assert drafts_seen, "the transcript never saw the open canvas"
    frames = list(decode_frames(reply.replay))
    assert any(f.kind == "draft" for f in frames) and frames[-1].committed_text == REPLY
    assert [m.role for m in controller.transcript] == ["user", "assistant"]
    assert controller.transcript[0].status == "finished"
    assert _stored(controller) == _shown(controller)
    stored_reply = controller.store.get_message(message_id)
    assert stored_reply.stats == reply.stats and stored_reply.replay == reply.replay
    conversation = controller.conversations[0]
    assert conversation.id == controller.current_conversation_id and conversation.title == "Hello there"
    assert not controller.is_generating


@pytest.mark.slow
def test_stop_keeps_the_committed_part_as_stopped(chat_store, make_engine_client, tiny_model_dir, qtbot, monkeypatch):
    # Its own worker at 0.2 s per step: the canvas after the first needs about a second more.
    monkeypatch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", REPLY)
    monkeypatch.setenv("CANVAS_CHAT_TEST_STEP_DELAY", "0.2")
    client = make_engine_client()
    start_and_load(qtbot, client, tiny_model_dir)
    controller = ConversationController(chat_store, client, TEST_SETTINGS)
    commits = []
    try:
        with qtbot.waitSignal(client.canvas_committed, timeout=timeout_ms(60)) as first_commit:
            message_id = controller.send("Tell me a long story")
        client.canvas_committed.connect(commits.append)
        with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(30)) as finished:
            controller.stop()
        client.canvas_committed.disconnect(commits.append)
        assert finished.args == [message_id, "stopped"]
        assert commits == [], "the open canvas ran to its end after Stop"
        reply = controller.transcript.get(message_id)
        # The committed canvas, plus what had settled of the open one when Stop came (i15 keeps it).
        committed = first_commit.args[0].reply_text.strip()
        assert committed and reply.content.startswith(committed) and reply.content != REPLY
        # ... and only its settled start: the kept text is what the reply says, with no gap glued over.
        assert REPLY.startswith(reply.content), (reply.content, REPLY)
        assert controller.store.get_message(message_id).content == reply.content
        assert controller.store.get_message(message_id).status == "stopped"
    finally:
        controller.close()


@pytest.mark.slow
def test_regenerate_and_edit_and_resend(controller, qtbot):
    first_reply, _ = _send_and_wait(qtbot, controller, "first question")
    _send_and_wait(qtbot, controller, "second question")
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(60)) as finished:
        regenerated = controller.regenerate()
    assert finished.args == [regenerated, "finished"]
    assert [m.content for m in controller.transcript] == ["first question", REPLY, "second question", REPLY]
    assert controller.transcript[-1].id == regenerated
    assert _stored(controller) == _shown(controller)

    first_user = controller.transcript[0]
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(60)):
        controller.edit_and_resend(first_user.id, "first question, edited")
    assert [m.content for m in controller.transcript] == ["first question, edited", REPLY]
    assert first_reply not in [m.id for m in controller.transcript]
    assert _stored(controller) == _shown(controller)


@pytest.mark.slow
def test_only_one_reply_at_a_time(controller, qtbot):
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(60)):
        assert controller.send("one")
        assert controller.send("two") is None
        assert controller.regenerate() is None
        assert controller.edit_and_resend(controller.transcript[0].id, "x") is None
    assert len(controller.transcript) == 2


@pytest.mark.slow
def test_conversations_persist_across_a_restart(controller, qtbot):
    _send_and_wait(qtbot, controller, "remember me")
    conversation_id = controller.current_conversation_id
    shown = _shown(controller)
    controller.store.close()
    with ChatStore() as store:
        again = ConversationController(store, controller.client, TEST_SETTINGS)
        assert [c.id for c in again.conversations] == [conversation_id]
        again.open_conversation(conversation_id)
        assert _shown(again) == shown
        assert again.transcript[1].replay and again.transcript[1].stats["finish_reason"] == "eos"
        again.close()
    controller.store = ChatStore()  # so the fixture's store can close


def test_rename_delete_undo_and_search(offline_controller):
    controller, _ = offline_controller
    a = controller.new_conversation()
    b = controller.new_conversation()
    assert [c.id for c in controller.conversations] == [b.id, a.id]
    controller.rename_conversation(a.id, "  Pancakes  ")
    assert controller.conversations.get(a.id).title == "Pancakes"
    assert [h.conversation.id for h in controller.search("pancake")] == [a.id]
    controller.delete_conversation(b.id)
    assert controller.current_conversation_id == "" and len(controller.transcript) == 0
    assert [c.id for c in controller.conversations] == [a.id]
    controller.undo_delete_conversation(b.id)
    assert [c.id for c in controller.conversations] == [b.id, a.id]


def test_engine_failure_marks_the_reply_error(offline_controller, qtbot):
    controller, _ = offline_controller
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(5)) as finished:
        message_id = controller.send("anyone there?")
    assert finished.args == [message_id, "error"]
    reply = controller.transcript.get(message_id)
    assert "not running" in reply.error
    assert controller.store.get_message(message_id).status == "error"
    assert controller.history_for_reply() == [("user", "anyone there?")] or [
        (m.role, m.content) for m in controller.history_for_reply()
    ] == [("user", "anyone there?")]


def test_worker_death_marks_the_reply_interrupted_keeping_committed_text(offline_controller, qtbot):
    controller, client = offline_controller
    message_id = controller.send("question")
    request_id = controller.active_request_id
    # What the client reports when a worker dies after one canvas (see test_engine_client).
    client.canvas_committed.emit(CanvasCommitted(request_id, 0, "partial ", "partial ", 4, 8))
    assert controller.store.get_message(message_id).content == "partial "  # written at the commit
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(5)) as finished:
        client.generation_interrupted.emit(request_id)
    assert finished.args == [message_id, "interrupted"]
    stored = controller.store.get_message(message_id)
    assert (stored.status, stored.content) == ("interrupted", "partial ")
    with qtbot.assertNotEmitted(controller.reply_finished, wait=50):
        pass  # the late "engine stopped" error of that request is ignored


def test_app_killed_mid_reply_keeps_committed_text_as_interrupted(offline_controller):
    controller, client = offline_controller
    message_id = controller.send("question")
    client.canvas_committed.emit(CanvasCommitted(controller.active_request_id, 0, "shown ", "shown ", 3, 8))
    path = controller.store.path
    controller.close()  # the app dies here: no final write
    controller.store.close()
    with ChatStore(path) as reopened:
        stored = reopened.get_message(message_id)
    assert (stored.status, stored.content) == ("interrupted", "shown ")


def test_store_failure_keeps_messages_in_memory_and_saves_them_later(offline_controller, qtbot, caplog):
    controller, _ = offline_controller
    controller.new_conversation()
    failures = []
    controller.store_failed.connect(failures.append)
    controller.store._db.execute("PRAGMA query_only = ON")
    with caplog.at_level(logging.ERROR, logger="canvas_chat.store"):
        with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(5)):
            message_id = controller.send("kept in memory")
    assert failures and "read-only" in failures[0]
    assert [m.content for m in controller.transcript] == ["kept in memory", ""]
    controller.store._db.execute("PRAGMA query_only = OFF")
    controller.rename_conversation(controller.current_conversation_id, "Saved later")
    stored = controller.store.messages(controller.current_conversation_id)
    assert [(m.role, m.content) for m in stored] == [("user", "kept in memory"), ("assistant", "")]
    assert stored[1].id == message_id and stored[1].status == "error"


def test_a_refused_final_write_is_retried_by_the_next_write(offline_controller, qtbot, caplog):
    controller, client = offline_controller
    message_id = controller.send("question")
    request_id = controller.active_request_id
    controller.store._db.execute("PRAGMA query_only = ON")
    with caplog.at_level(logging.ERROR, logger="canvas_chat.store"):
        client.canvas_committed.emit(CanvasCommitted(request_id, 0, "all of it", "all of it", 3, 8))
        with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(5)):
            client.generation_interrupted.emit(request_id)
    assert controller.store.get_message(message_id).status == "streaming"  # still the old row
    controller.store._db.execute("PRAGMA query_only = OFF")
    controller.new_conversation()  # any later write flushes the refused ones first
    stored = controller.store.get_message(message_id)
    assert (stored.status, stored.content) == ("interrupted", "all of it")


def test_title_from_first_line():
    assert title_from("\n  Hello world \nmore") == "Hello world"
    assert title_from("   ") == DEFAULT_TITLE
    assert len(title_from("x" * 200)) == 48


def _draft(request_id, pieces, settled, canvas=0, step=3):
    from engine.protocol import Draft

    return Draft(request_id, canvas, step, 8, "".join(pieces), list(pieces), list(settled), [0] * len(pieces))


def _cancelled(request_id, text="", token_ids=()):
    from engine.protocol import Done, GenerationStats

    stats = GenerationStats(0.1, 0.4, len(token_ids), 0.0, 3, 0.0, 3.0, 0, 12, 0)
    return Done(request_id, "cancelled", text, list(token_ids), stats)


def test_stop_before_the_first_commit_keeps_the_settled_draft_text(offline_controller, qtbot):
    """What the user watched settle is kept, not an empty bubble with '0.0 tok/s' -- up to the
    first unsettled position: a token settled after it is not final, and gluing across the gap
    would drop a word."""
    controller, client = offline_controller
    message_id = controller.send("question")
    request_id = controller.active_request_id
    pieces = ["The", " capital", " of", "zq", " Peru"]
    client.draft_received.emit(_draft(request_id, pieces, [True, True, True, False, True]))
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(5)) as finished:
        client.generation_finished.emit(_cancelled(request_id))
    assert finished.args == [message_id, "stopped"]
    stored = controller.store.get_message(message_id)
    assert (stored.status, stored.content) == ("stopped", "The capital of")
    assert not stored.stats, "no speed for a reply that committed nothing"
    assert controller.transcript.get(message_id).content == "The capital of"


def test_stop_mid_canvas_keeps_the_committed_text_and_the_settled_draft(offline_controller, qtbot):
    controller, client = offline_controller
    message_id = controller.send("question")
    request_id = controller.active_request_id
    client.canvas_committed.emit(CanvasCommitted(request_id, 0, "First part.", "First part.", 4, 8))
    client.draft_received.emit(_draft(request_id, [" Then", "zq", " more"], [True, False, True], canvas=1))
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(5)):
        client.generation_finished.emit(_cancelled(request_id, "First part.", [5, 6, 7, 8]))
    stored = controller.store.get_message(message_id)
    assert stored.content == "First part. Then"
    assert stored.stats and stored.stats["finish_reason"] == "cancelled"


def test_worker_death_before_the_first_commit_keeps_the_settled_draft_text(offline_controller, qtbot):
    controller, client = offline_controller
    message_id = controller.send("question")
    request_id = controller.active_request_id
    client.draft_received.emit(_draft(request_id, ["Lima", " is", "#@"], [True, True, False]))
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(5)) as finished:
        client.generation_interrupted.emit(request_id)
    assert finished.args == [message_id, "interrupted"]
    assert controller.store.get_message(message_id).content == "Lima is"


def test_the_auto_title_follows_an_edited_first_question_unless_renamed(offline_controller, qtbot):
    controller, _ = offline_controller
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(5)):
        controller.send("What is the capital of Peru?")
    conversation_id = controller.current_conversation_id
    first = next(m for m in controller.transcript if m.role == "user")
    assert controller.conversations.get(conversation_id).title == "What is the capital of Peru?"
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(5)):
        controller.edit_and_resend(first.id, "What colour is snow?")
    assert controller.conversations.get(conversation_id).title == "What colour is snow?"
    assert controller.store.get_conversation(conversation_id).title == "What colour is snow?"

    controller.rename_conversation(conversation_id, "Weather")
    first = next(m for m in controller.transcript if m.role == "user")
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(5)):
        controller.edit_and_resend(first.id, "What is 3 + 4?")
    assert controller.conversations.get(conversation_id).title == "Weather"
