"""Rewriting a selected span of a reply in place, through the real worker on the tiny model: only
the span changes (kept text and tokens identical), drafts cover only the span and animate it in
place, undo/redo between versions that survive a store reopen, stop and errors lose nothing."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from app.chat.controller import ConversationController
from app.chat.store import ChatStore
from app.transcript.canvas_paint import NOISE_CELL
from app.transcript.span_animation import SPAN_MARK, shown_span_text, source_range
from app.worker.engine_client import EngineClient, EngineState
from tests.conftest import timeout_ms
from tests.gui.conftest import REPLY
from tests.gui.window_helpers import TEST_SETTINGS, ignore_offscreen_limits, send_and_wait, wait_model_loaded

SELECTED = "turns noise"  # tokens 6:14 of REPLY: inside its first 16-token canvas
ACROSS = "noise into"  # tokens 10:18: across the boundary of its first two canvases


@pytest.fixture
def controller(shared_engine_client, chat_store, qtbot):
    client = shared_engine_client.client
    qtbot.waitUntil(lambda: client.state == EngineState.READY, timeout=timeout_ms(60))
    controller = ConversationController(chat_store, client, TEST_SETTINGS)
    yield controller
    controller.close()
    assert client.state == EngineState.READY, "a test left the shared worker busy"


def _reply(qtbot, controller, text="Tell me about denoising."):
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(60)):
        message_id = controller.send(text)
    reply = controller.transcript.get(message_id)
    assert reply.content == REPLY and reply.token_ids, "a finished reply keeps its token ids"
    return reply


def _rewrite(qtbot, controller, reply, selected=SELECTED, instruction=""):
    """Rewrites `selected` of the reply; returns (outcome, every RewriteInProgress it showed, span drafts)."""
    shown, drafts = [], []
    controller.transcript.changed.connect(
        lambda index, message, names: shown.append(message.rewrite) if "rewrite" in names and message.rewrite else None
    )
    controller.client.span_draft_arrived.connect(drafts.append)
    start = reply.content.index(selected)
    with qtbot.waitSignal(controller.rewrites.finished, timeout=timeout_ms(60)) as finished:
        assert controller.rewrites.start(reply.id, start, start + len(selected), instruction) == ""
        assert controller.is_generating
    controller.client.span_draft_arrived.disconnect(drafts.append)
    return finished.args[1], shown, drafts


def test_only_the_span_changes_and_the_drafts_cover_only_it(controller, qtbot):
    reply = _reply(qtbot, controller)
    old_text, old_ids = reply.content, reply.token_ids
    outcome, shown, drafts = _rewrite(qtbot, controller, reply)
    assert outcome == "rewritten"

    # The drafts: the span's tokens only, widened from the selection to whole tokens.
    start, end = drafts[0].span_tokens
    char_start, char_end = drafts[0].span_chars
    assert char_start <= old_text.index(SELECTED) and old_text.index(SELECTED) + len(SELECTED) <= char_end
    assert all((d.span_start, d.span_end) == (start, end) and len(d.pieces) == end - start for d in drafts)
    assert end - start < len(old_ids) // 2

    # The kept tokens are bit-identical, the span's are new, and the text around it is the old text.
    new_ids = reply.token_ids
    assert len(new_ids) == len(old_ids)
    assert new_ids[:start] == old_ids[:start] and new_ids[end:] == old_ids[end:]
    assert new_ids[start:end] != old_ids[start:end]
    rewritten = reply.versions.shown.rewritten
    assert reply.content[: rewritten[0]] == old_text[:char_start]
    assert reply.content[rewritten[1] :] == old_text[char_end:]
    assert reply.content != old_text

    # In place: while it ran, the reply showed the old text on both sides and the span between.
    assert shown and shown[0].parts == (), "the span turns to noise before the first draft"
    for state in shown:
        assert state.old_text == old_text and SPAN_MARK not in state.old_text
    with_draft = [state for state in shown if state.parts]
    assert with_draft
    for state in with_draft:
        assert (state.before, state.after) == (old_text[:char_start], old_text[char_end:])
        assert len(state.segments()) == end - start
    assert shown_span_text(shown[0]) == NOISE_CELL * len(shown[0].segments())
    assert reply.rewrite is None and not controller.is_generating


def test_undo_and_redo_and_both_versions_survive_a_store_reopen(controller, qtbot):
    reply = _reply(qtbot, controller)
    old_text, old_ids = reply.content, reply.token_ids
    assert _rewrite(qtbot, controller, reply)[0] == "rewritten"
    new_text, new_ids = reply.content, reply.token_ids
    assert controller.rewrites.can_undo(reply.id) and not controller.rewrites.can_redo(reply.id)

    reopened = ChatStore(controller.store.path)
    try:
        stored = reopened.get_message(reply.id)
        assert (stored.content, stored.token_ids) == (new_text, new_ids)
        assert [v.content for v in stored.versions.items] == [old_text, new_text] and stored.versions.current == 1
    finally:
        reopened.close()

    assert controller.rewrites.undo(reply.id)
    assert (reply.content, reply.token_ids) == (old_text, old_ids)
    assert controller.history_for_reply()[-1].content == old_text, "the next turn sees the shown version"
    reopened = ChatStore(controller.store.path)
    try:
        stored = reopened.get_message(reply.id)
        assert (stored.content, stored.token_ids) == (old_text, old_ids)
        assert [v.content for v in stored.versions.items] == [old_text, new_text] and stored.versions.current == 0
    finally:
        reopened.close()
    assert not controller.rewrites.undo(reply.id), "nothing before the first version"
    assert controller.rewrites.redo(reply.id)
    assert (reply.content, reply.token_ids) == (new_text, new_ids)
    assert controller.store.get_message(reply.id).content == new_text


def test_a_span_across_a_canvas_boundary_is_rewritten_canvas_by_canvas(controller, qtbot):
    reply = _reply(qtbot, controller)
    old_ids = reply.token_ids
    outcome, shown, drafts = _rewrite(qtbot, controller, reply, selected=ACROSS)
    assert outcome == "rewritten"
    start, end = drafts[0].span_tokens
    assert start < 16 < end, "the selection must cross the first canvas boundary"
    # Left to right, each canvas drafting only its part of the span...
    assert [d.canvas_index for d in drafts] == sorted(d.canvas_index for d in drafts)
    assert {(d.canvas_index, d.span_start, d.span_end) for d in drafts} == {(0, start, 16), (1, 16, min(end, 32))}
    # ...while the reply shows the part of a later canvas as noise until it is reached...
    first_canvas_only = [s for s in shown if len(s.parts) == 1 and s.parts[0].canvas_index == 0]
    assert first_canvas_only and first_canvas_only[-1].segments()[16 - start :] == [("", False)] * (end - 16)
    # ...and keeps showing the first canvas's part once the second one is being drafted.
    both = [s for s in shown if [p.canvas_index for p in s.parts] == [0, 1]]
    assert both and all(len(s.segments()) == end - start for s in both)
    assert all(s.segments()[: 16 - start] == list(zip(s.parts[0].pieces, s.parts[0].settled)) for s in both)
    # ...and every token outside the span is kept.
    assert reply.token_ids[:start] == old_ids[:start] and reply.token_ids[end:] == old_ids[end:]


def test_stop_during_a_rewrite_keeps_the_old_text(shared_engine_client, chat_store, qtbot, monkeypatch):
    client = shared_engine_client.client
    qtbot.waitUntil(lambda: client.state == EngineState.READY, timeout=timeout_ms(60))
    controller = ConversationController(chat_store, client, TEST_SETTINGS)
    try:
        reply = _reply(qtbot, controller)
        old = (reply.content, reply.token_ids)
        start = reply.content.index(ACROSS)
        with qtbot.waitSignal(client.span_draft_arrived, timeout=timeout_ms(60)):
            assert controller.rewrites.start(reply.id, start, start + len(ACROSS)) == ""
        with qtbot.waitSignal(controller.rewrites.finished, timeout=timeout_ms(60)) as finished:
            controller.stop()
        assert finished.args[1] == "cancelled"
        assert (reply.content, reply.token_ids, reply.versions, reply.rewrite) == (*old, None, None)
        assert chat_store.get_message(reply.id).content == old[0]
    finally:
        controller.close()


def test_leaving_and_reopening_the_chat_mid_rewrite_shows_it_and_keeps_its_result(controller, qtbot):
    reply = _reply(qtbot, controller)
    conversation_id, old_text = reply.conversation_id, reply.content
    start = old_text.index(ACROSS)
    with qtbot.waitSignal(controller.client.span_draft_arrived, timeout=timeout_ms(60)):
        assert controller.rewrites.start(reply.id, start, start + len(ACROSS)) == ""
    controller.open_conversation("")
    controller.open_conversation(conversation_id)
    shown = controller.transcript.get(reply.id)
    assert shown is reply and shown.rewrite is not None, "the reopened chat shows the rewrite going on"
    with qtbot.waitSignal(controller.rewrites.finished, timeout=timeout_ms(60)) as finished:
        pass
    assert finished.args[1] == "rewritten" and reply.content != old_text
    assert controller.store.get_message(reply.id).content == reply.content


def test_refusals_and_engine_errors_are_plain_and_lose_nothing(controller, qtbot):
    reply = _reply(qtbot, controller)
    old = (reply.content, reply.token_ids)
    assert "Select some text" in controller.rewrites.start(reply.id, 3, 3)
    assert "Only the model's replies" in controller.rewrites.start(controller.transcript[0].id, 0, 4)

    # While a reply is being written: refused, and that reply goes on.
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(60)):
        controller.send("And another?")
        assert "A reply is being written" in controller.rewrites.start(reply.id, 0, 5)

    # A reply without stored tokens (written before they were kept).
    controller._update(reply, token_ids=())
    assert "no stored tokens" in controller.rewrites.start(reply.id, 0, 5)
    # The engine refuses a span that is not in the reply's tokens: a plain message, nothing lost.
    controller._update(reply, token_ids=old[1][-1:])  # only the end of turn: no text at all
    with qtbot.waitSignal(controller.rewrites.failed, timeout=timeout_ms(60)) as failed:
        assert controller.rewrites.start(reply.id, 0, 5) == ""
    assert "outside the text" in failed.args[1] and "unchanged" in failed.args[1]
    assert reply.content == old[0] and reply.rewrite is None and reply.versions is None
    assert not controller.is_generating


def test_without_a_loaded_model_the_rewrite_is_refused(qapp, chat_store, qtbot):
    from app.chat.messages import Message

    client = EngineClient()
    controller = ConversationController(chat_store, client, TEST_SETTINGS)
    try:
        conversation = controller.new_conversation()
        for role, text in (("user", "Hi"), ("assistant", "Hello there.")):
            controller._add(Message(role=role, content=text, conversation_id=conversation.id, token_ids=(5, 6, 7)))
        reply = controller.transcript.last()
        assert "No model is loaded" in controller.rewrites.start(reply.id, 0, 5)
        assert reply.rewrite is None and not controller.is_generating
        # Replies from a remote server: rewriting in place needs the local engine.
        controller.backend = object()
        assert "needs the local model" in controller.rewrites.start(reply.id, 0, 5)
    finally:
        controller.close()
        client.deleteLater()


@pytest.mark.parametrize(
    ("source", "rendered", "selected", "expected"),
    [
        ("The cat sat. The cat ran.", "The cat sat. The cat ran.", (13, 20), (13, 20)),  # the second "The cat"
        ("Say **very** loud words.", "Say very loud words.", (4, 13), (6, 17)),  # Markdown inside the selection
        ("Plain text.", "Plain text.", (5, 6), None),  # only whitespace selected
    ],
)
def test_a_selection_in_the_shown_text_maps_to_the_markdown_source(source, rendered, selected, expected):
    start, end = selected
    got = source_range(source, rendered[:start], rendered[start:end], rendered[end:])
    assert got == expected
    if got is not None and "**" not in source:
        assert source[got[0] : got[1]] == rendered[start:end]


# ---------------------------------------------------------------------------- the window


@ignore_offscreen_limits
@pytest.mark.slow
def test_the_window_rewrites_a_selection_from_the_keyboard_and_ctrl_z_undoes_it(qtbot, tiny_model_dir, monkeypatch):
    from app.window.main_window import MainWindow

    monkeypatch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", REPLY)
    monkeypatch.setenv("CANVAS_CHAT_TEST_STEP_DELAY", "0.03")
    store = ChatStore()
    client = EngineClient(restart_delays_s=(0.05,))
    window = MainWindow(TEST_SETTINGS, store, client)
    window.resize(1000, 700)
    window.show()
    qtbot.waitExposed(window)
    try:
        assert window.start_engine(str(tiny_model_dir))
        wait_model_loaded(qtbot, window)
        reply_id = send_and_wait(qtbot, window, "Tell me about denoising.")
        view, reply = window.transcript_view, window.controller.transcript.get(reply_id)
        old = reply.content

        # Nothing selected: the shortcut says what to do.
        qtbot.keyClick(window, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
        assert window.banner.isVisible() and "Select some text" in window.banner.detail.text()

        shown = view.delegate.document_for(reply, 600)[0].toPlainText()
        assert view.select_text(reply_id, shown.index(SELECTED), shown.index(SELECTED) + len(SELECTED))
        menu = view.context_menu_for(reply)
        rewrite_action = next(a for a in menu.actions() if a.objectName() == "rewriteSelectionAction")
        assert rewrite_action.isEnabled()
        menu.deleteLater()

        drawn = []
        window.transcript_model.dataChanged.connect(
            lambda *_: drawn.append(view.delegate.document_for(reply, 600)[0].toPlainText()) if reply.rewrite else None
        )
        with qtbot.waitSignal(window.controller.rewrites.finished, timeout=timeout_ms(60)) as finished:
            qtbot.keyClick(window, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
            assert window.controller.is_generating
        assert finished.args[1] == "rewritten"
        # Drawn in place: the old text on both sides of the span, noise inside it at first.
        at = old.index(SELECTED)
        before, after = old[: at - 4], old[at + len(SELECTED) + 4 :]
        assert drawn and all(text.startswith(before) and text.rstrip().endswith(after) for text in drawn)
        assert NOISE_CELL.strip("\u200b") in drawn[0]
        assert reply.content != old and "Rewrote the selection" in window.statusBar().currentMessage()
        geometry = view.delegate.row_geometry(view.index_of_message(reply_id))
        assert "Undo rewrite" in geometry.links

        view.select_message("")
        qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
        assert reply.content == old
        assert store.get_message(reply_id).content == old
    finally:
        window.close()
        client.shutdown()
        store.close()
        window.deleteLater()


def test_a_database_from_before_rewrites_opens_and_keeps_its_messages(tmp_path):
    import sqlite3
    import time

    from app.chat import store as store_module
    from app.chat.messages import Message

    path = tmp_path / "chats.sqlite3"
    before = store_module.MIGRATIONS.index(store_module._migration_add_reply_tokens_and_versions)
    db = sqlite3.connect(path, isolation_level=None)
    for migration in store_module.MIGRATIONS[:before]:
        migration(db)
    db.execute(f"PRAGMA user_version = {before}")
    db.execute("INSERT INTO conversations (id, title, created, updated) VALUES ('c', 'Old', 0, 0)")
    db.execute(
        "INSERT INTO messages (id, conversation_id, role, content, status, created, updated) "
        "VALUES ('m', 'c', 'assistant', 'An old reply.', 'finished', 0, 0)"
    )
    db.close()
    with ChatStore(path) as store:
        old = store.get_message("m")
        assert (old.content, old.token_ids, old.versions) == ("An old reply.", (), None)
        store.add_message(Message(role="assistant", content="New.", conversation_id="c", token_ids=(4, 5), created=time.time()))
        store.update_message("m", versions=None, token_ids=(1, 2, 3))
        assert store.get_message("m").token_ids == (1, 2, 3)
    # A versions value this version cannot read leaves the message readable, without versions.
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE messages SET versions = '{\"current\": 5, \"items\": []}' WHERE id = 'm'")
    db.close()
    with ChatStore(path) as store:
        assert store.get_message("m").versions is None and store.get_message("m").content == "An old reply."
