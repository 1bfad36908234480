"""ChatStore: WAL, schema migrations, messages, search, rename/delete/undo, unfinished replies
marked interrupted on reopen, and clear errors when the disk refuses a write."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from engine import paths
from app.chat.messages import Message
from app.chat.store import MIGRATIONS, SCHEMA_VERSION, ChatStore, StoreError, StoreWriteError


def _conversation_with(store, *texts):
    conversation = store.create_conversation()
    for index, text in enumerate(texts):
        role = "user" if index % 2 == 0 else "assistant"
        store.add_message(Message(role=role, content=text, conversation_id=conversation.id))
    return conversation


def test_fresh_database_is_wal_with_current_schema(chat_store):
    assert chat_store.path == paths.database_path()
    assert chat_store.journal_mode == "wal"
    assert chat_store.schema_version == SCHEMA_VERSION
    assert chat_store.has_fts


def test_messages_round_trip_in_order(chat_store):
    conversation = chat_store.create_conversation("Title")
    first = Message(role="user", content="hello", conversation_id=conversation.id)
    second = Message(role="assistant", content="", conversation_id=conversation.id, status="streaming")
    chat_store.add_message(first)
    chat_store.add_message(second)
    chat_store.update_message(
        second.id, content="hi there", status="finished", stats={"tokens_per_s": 12.5}, replay=b"\x00\x01"
    )
    loaded = chat_store.messages(conversation.id)
    assert [m.id for m in loaded] == [first.id, second.id]
    assert (loaded[1].content, loaded[1].status, loaded[1].stats, loaded[1].replay) == (
        "hi there", "finished", {"tokens_per_s": 12.5}, b"\x00\x01",
    )
    with pytest.raises(ValueError):
        chat_store.update_message(second.id, role="user")


def test_list_by_recent_rename_and_delete_with_undo(chat_store):
    older = _conversation_with(chat_store, "one")
    newer = _conversation_with(chat_store, "two")
    assert [c.id for c in chat_store.list_conversations()] == [newer.id, older.id]
    chat_store.add_message(Message(role="user", content="again", conversation_id=older.id))
    assert [c.id for c in chat_store.list_conversations()] == [older.id, newer.id]

    chat_store.rename_conversation(newer.id, "Renamed")
    assert chat_store.get_conversation(newer.id).title == "Renamed"

    chat_store.delete_conversation(newer.id)
    assert [c.id for c in chat_store.list_conversations()] == [older.id]
    assert chat_store.search("two") == []
    restored = chat_store.restore_conversation(newer.id)
    assert restored.title == "Renamed"
    assert [m.content for m in chat_store.messages(newer.id)] == ["two"]


def test_deleted_conversations_are_purged_on_the_next_open(chat_store):
    doomed = _conversation_with(chat_store, "bye")
    chat_store.delete_conversation(doomed.id)
    chat_store.close()
    with ChatStore() as reopened:
        assert reopened.restore_conversation(doomed.id) is None
        assert reopened.messages(doomed.id) == []


def test_unfinished_messages_become_interrupted_on_reopen(chat_store):
    conversation = chat_store.create_conversation()
    user = Message(role="user", content="q", conversation_id=conversation.id, status="sending")
    reply = Message(role="assistant", content="partial", conversation_id=conversation.id, status="streaming")
    done = Message(role="assistant", content="full", conversation_id=conversation.id, status="finished")
    for message in (user, reply, done):
        chat_store.add_message(message)
    chat_store.close()
    with ChatStore() as reopened:
        assert reopened.interrupted_on_open == 2
        statuses = {m.id: (m.status, m.content) for m in reopened.messages(conversation.id)}
    assert statuses == {user.id: ("interrupted", "q"), reply.id: ("interrupted", "partial"), done.id: ("finished", "full")}


def test_delete_messages_from_truncates_the_tail(chat_store):
    conversation = _conversation_with(chat_store, "a", "b", "c", "d")
    messages = chat_store.messages(conversation.id)
    removed = chat_store.delete_messages_from(messages[2].id)
    assert [m.content for m in removed] == ["c", "d"]
    assert [m.content for m in chat_store.messages(conversation.id)] == ["a", "b"]


@pytest.mark.parametrize("use_fts", [True, False])
def test_search_titles_and_message_text(chat_store, use_fts):
    chat_store.has_fts = use_fts
    python = _conversation_with(chat_store, "How do I reverse a list in Python?", "Use reversed(items).")
    cooking = _conversation_with(chat_store, "Best pancake recipe", "Flour, eggs, milk.")
    chat_store.rename_conversation(cooking.id, "Breakfast ideas")
    assert [h.conversation.id for h in chat_store.search("pancake")] == [cooking.id]
    assert [h.conversation.id for h in chat_store.search("Breakfast")] == [cooking.id]
    assert [h.conversation.id for h in chat_store.search("revers")] == [python.id]  # prefix / substring
    assert "reverse" in chat_store.search("reverse")[0].snippet
    assert chat_store.search("no such words here") == []
    for awkward in ('"', "%", "_", "a AND", "(", "*", "NEAR("):
        chat_store.search(awkward)  # never raises
    assert len(chat_store.search("")) == 2


def test_search_sees_updated_reply_text(chat_store):
    conversation = chat_store.create_conversation()
    reply = Message(role="assistant", content="", conversation_id=conversation.id, status="streaming")
    chat_store.add_message(reply)
    chat_store.update_message(reply.id, content="denoising canvases", status="finished")
    assert [h.conversation.id for h in chat_store.search("canvases")] == [conversation.id]


def test_version_1_database_is_migrated_and_indexed(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO conversations VALUES ('c1', 'Old chat', 1.0, 1.0, NULL)")
    db.execute(
        "INSERT INTO messages (id, conversation_id, role, content, status, created, updated) "
        "VALUES ('m1', 'c1', 'user', 'an archived question', 'finished', 1.0, 1.0)"
    )
    db.commit()
    db.close()
    with ChatStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert [h.conversation.id for h in store.search("archived")] == ["c1"]


def test_database_from_a_newer_app_is_refused(tmp_path):
    path = tmp_path / "new.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        ChatStore(path)


def test_read_only_database_raises_a_clear_error_and_keeps_data(chat_store, caplog):
    conversation = _conversation_with(chat_store, "kept")
    chat_store._db.execute("PRAGMA query_only = ON")  # what a read-only file looks like to SQLite
    with caplog.at_level(logging.ERROR, logger="canvas_chat.store"):
        with pytest.raises(StoreWriteError, match="read-only"):
            chat_store.add_message(Message(role="user", content="lost?", conversation_id=conversation.id))
        with pytest.raises(StoreWriteError):
            chat_store.rename_conversation(conversation.id, "nope")
    chat_store._db.execute("PRAGMA query_only = OFF")
    assert [m.content for m in chat_store.messages(conversation.id)] == ["kept"]
    chat_store.add_message(Message(role="user", content="later", conversation_id=conversation.id))
    assert [m.content for m in chat_store.messages(conversation.id)] == ["kept", "later"]


def test_full_disk_raises_a_clear_error_and_rolls_back(chat_store, caplog):
    conversation = _conversation_with(chat_store, "before")
    pages = chat_store._db.execute("PRAGMA page_count").fetchone()[0]
    chat_store._db.execute(f"PRAGMA max_page_count = {pages + 1}")
    with caplog.at_level(logging.ERROR, logger="canvas_chat.store"):
        with pytest.raises(StoreWriteError, match="disk is full"):
            for _ in range(50):
                chat_store.add_message(Message(role="user", content="x" * 20000, conversation_id=conversation.id))
    assert chat_store.messages(conversation.id)[0].content == "before"
    assert all(len(m.content) in (6, 20000) for m in chat_store.messages(conversation.id))
