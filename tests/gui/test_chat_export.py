"""Export and import of chats: the JSON round-trips a chat (code, math, stats, recorded drafts)
exactly but for new ids; a malformed or too big file is refused and changes nothing; the File
menu's actions with the file dialogs patched."""

from __future__ import annotations

import dataclasses
import json

import pytest
from PySide6.QtWidgets import QFileDialog

from app.chat import export
from app.chat.export import ExportedChat, ImportRefused, chat_of, chats_to_json, chats_to_markdown, parse_chats_json, read_chats_file
from app.chat.messages import Message
from app.chat.replay import ReplayRecorder, decode_frames
from app.chat.store import ChatStore, StoreWriteError
from engine.protocol import CanvasCommitted, Draft
from tests.gui.window_helpers import TEST_SETTINGS, ignore_offscreen_limits

CODE_REPLY = (
    "Here is the sum, $a + b = c$, and Euler:\n\n$$e^{i\\pi} + 1 = 0$$\n\n"
    "```python\ndef add(a, b):\n    return a + b  # $5 and $10\n```\n\nIt costs $5 and $10.\n"
)
STATS = {"time_to_first_draft_s": 0.21, "tokens_per_s": 48.25, "tokens_per_forward": 3.2, "steps_per_canvas": 5.0,
         "finish_reason": "eos", "prompt_tokens": 27, "cached_tokens": 0}


def _replay_blob() -> bytes:
    recorder = ReplayRecorder()
    recorder.record_draft(Draft("r", 0, 0, 2, "ab", ["a", "b"], [False, True], [3, 0]))
    recorder.record_draft(Draft("r", 0, 1, 2, "ac", ["a", "c"], [True, True], [0, 0]))
    recorder.record_commit(CanvasCommitted("r", 0, "ac", "ac", 2, 2))
    return recorder.finish()


def _stored_chat(store: ChatStore, title: str = "Sums and code") -> ExportedChat:
    conversation = store.create_conversation(title)
    question = Message(role="user", content="Add $a$ and $b$ in Python, please.", conversation_id=conversation.id,
                       created=1_700_000_000.125, updated=1_700_000_000.5)
    answer = Message(role="assistant", content=CODE_REPLY, conversation_id=conversation.id, stats=STATS,
                     replay=_replay_blob(), answered_by="Remote · demo-model at 127.0.0.1:8000", created=1_700_000_001.0, updated=1_700_000_002.75)
    stopped = Message(role="assistant", content="Half a", conversation_id=conversation.id, status="stopped",
                      created=1_700_000_003.0, updated=1_700_000_004.0)
    for message in (question, answer, stopped):
        store.add_message(message)
    return chat_of(store.get_conversation(conversation.id), store.messages(conversation.id))


def _comparable(chat: ExportedChat) -> tuple:
    c = chat.conversation
    messages = [dataclasses.replace(m, id="", conversation_id="") for m in chat.messages]
    return c.title, c.created, c.updated, chat.settings, messages


def _snapshot(store: ChatStore) -> list:
    return [(c.id, c.title, [(m.id, m.content) for m in store.messages(c.id)]) for c in store.list_conversations()]


def test_json_export_then_import_round_trips_a_chat_exactly_with_new_ids(chat_store):
    original = _stored_chat(chat_store)
    text = chats_to_json([original], include_replay=True, app_version="0.1.0")
    document = json.loads(text)
    assert (document["format"], document["schema_version"], document["includes_replay"]) == ("canvas-chat-export", export.SCHEMA_VERSION, True)

    imported = chat_store.import_chats(parse_chats_json(text))
    again = chat_store.import_chats(parse_chats_json(text))  # the same file twice: two copies, no clash
    ids = {original.conversation.id, imported[0].id, again[0].id}
    assert len(ids) == 3
    for conversation in (imported[0], again[0]):
        back = chat_of(chat_store.get_conversation(conversation.id), chat_store.messages(conversation.id))
        assert _comparable(back) == _comparable(original)
        assert not {m.id for m in back.messages} & {m.id for m in original.messages}
    back_answer = chat_store.messages(imported[0].id)[1]
    assert back_answer.content == CODE_REPLY and back_answer.stats == STATS
    assert [f.pieces for f in decode_frames(back_answer.replay)] == [("a", "b"), ("a", "c"), ()]


def test_without_the_drafts_the_export_has_no_replay_and_the_settings_travel(chat_store):
    original = _stored_chat(chat_store)
    original.settings = {"system_prompt": "Be brief.", "denoising_steps": 24, "seed": 7}
    document = json.loads(chats_to_json([original], include_replay=False))
    assert [m["replay"] for m in document["conversations"][0]["messages"]] == [None, None, None]
    (chat,) = parse_chats_json(json.dumps(document))
    assert chat.settings == original.settings
    assert [m.replay for m in chat.messages] == [None, None, None]
    assert [m.content for m in chat.messages] == [m.content for m in original.messages]


def test_markdown_export_keeps_the_text_as_written(chat_store):
    chat = _stored_chat(chat_store)
    text = chats_to_markdown([chat, chat])
    assert text.startswith("# Sums and code\n")
    assert CODE_REPLY.rstrip("\n") in text  # code fences and math exactly as the model wrote them
    assert "## You · 2023-11-14 22:13 UTC" in text and "## Assistant" in text
    assert "*0.21 s to first draft · 48.2 tok/s · 3.2 tok/forward · 5.0 steps/canvas*" in text
    assert "*stopped*" in text
    assert text.count("# Sums and code\n") == 2 and "\n---\n" in text


def _valid_document(chat_store) -> dict:
    return json.loads(chats_to_json([_stored_chat(chat_store)], include_replay=True))


def _set(path: str, value):
    def change(document):
        target = document
        *parents, last = path.split(".")
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is KeyError:
            del target[int(last) if isinstance(target, list) else last]
        else:
            target[int(last) if isinstance(target, list) else last] = value
        return document
    return change


MALFORMED = {
    "a newer schema version": (_set("schema_version", export.SCHEMA_VERSION + 1), f"schema version {export.SCHEMA_VERSION + 1}"),
    "no schema version": (_set("schema_version", KeyError), "schema_version"),
    "another format": (_set("format", "chatgpt"), "not a Canvas Chat export"),
    "conversations not a list": (_set("conversations", {}), "wrong type"),
    "message without content": (_set("conversations.1.messages.1.content", KeyError), "has no “content”"),
    "role of a number": (_set("conversations.1.messages.0.role", 3), "wrong type"),
    "unknown role": (_set("conversations.1.messages.0.role", "tool"), "unknown role"),
    "created a string": (_set("conversations.1.messages.2.created", "yesterday"), "wrong type"),
    "created true": (_set("conversations.1.created", True), "wrong type"),
    "stats a list": (_set("conversations.1.messages.1.stats", [1, 2]), "wrong type"),
    "broken replay": (_set("conversations.1.messages.1.replay", "bm90IHpsaWI="), "recorded drafts"),
    "title missing": (_set("conversations.1.title", KeyError), "has no “title”"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_export_is_refused_with_a_plain_message_and_imports_nothing(chat_store, tmp_path, name):
    change, words = MALFORMED[name]
    document = _valid_document(chat_store)
    # A good chat first, the broken one second: a half-way import would leave the first in the store.
    document["conversations"].insert(0, json.loads(json.dumps(document["conversations"][0])))
    document = change(document)
    before = _snapshot(chat_store)
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ImportRefused, match=words):
        chat_store.import_chats(read_chats_file(path))
    assert _snapshot(chat_store) == before


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe\x00garbage", b"[]", b"null", b"[" * 100_000 + b"]" * 100_000])
def test_a_file_that_is_not_an_export_is_refused(tmp_path, data):
    path = tmp_path / "x.json"
    path.write_bytes(data)
    with pytest.raises(ImportRefused):
        read_chats_file(path)


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as file:
        file.truncate(export.MAX_IMPORT_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(ImportRefused, match="at most 256 MB"):
        read_chats_file(path)


@pytest.mark.log_expected("chat database write failed: CHECK constraint failed")
def test_a_write_that_fails_half_way_imports_no_chat(chat_store):
    good, bad = parse_chats_json(json.dumps(_valid_document(chat_store) | {"conversations": _valid_document(chat_store)["conversations"] * 2}))
    bad.messages[-1].status = "no such status"  # the database refuses the last row of the second chat
    before = _snapshot(chat_store)
    with pytest.raises(StoreWriteError):
        chat_store.import_chats([good, bad])
    assert _snapshot(chat_store) == before


# ---------------------------------------------------------------------- the File menu


@pytest.fixture
def window(qtbot, monkeypatch):
    from app.window.main_window import MainWindow
    from app.worker.engine_client import EngineClient

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


@ignore_offscreen_limits
def test_file_menu_exports_the_open_chat_and_imports_it_into_the_sidebar(window, qtbot, monkeypatch, tmp_path):
    chat = _stored_chat(window.store)
    window.controller.conversations.insert(0, chat.conversation)
    window.controller.open_conversation(chat.conversation.id)
    files = window.chat_files
    titles = [a.text() for a in window.menuBar().actions()[0].menu().actions()]
    assert ["&Export chat\u2026", "Export &all chats\u2026", "&Import chats\u2026"] == [t for t in titles if "port" in t]

    target = tmp_path / "mine"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), export_filter(a)))
    files.export_chat_action.trigger()
    dialog = files.options_dialog
    assert dialog is not None and dialog.json_radio.isChecked()
    dialog.replay_check.setChecked(True)
    with qtbot.waitSignal(files.exported):
        dialog.accept()
    written = tmp_path / "mine.json"
    document = json.loads(written.read_text(encoding="utf-8"))
    assert document["includes_replay"] and len(document["conversations"]) == 1

    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(written), ""))
    sidebar_before = len(window.controller.conversations)
    with qtbot.waitSignal(files.imported):
        files.import_action.trigger()
    assert len(window.controller.conversations) == sidebar_before + 1
    new_id = window.controller.current_conversation_id
    assert new_id != chat.conversation.id
    assert window.sidebar.list_view.currentIndex().data() is not None
    shown = [m.content for m in window.controller.transcript]
    assert shown == [m.content for m in chat.messages]
    assert window.controller.transcript[1].replay == chat.messages[1].replay


def export_filter(args) -> str:
    return args[3] if len(args) > 3 else ""


@ignore_offscreen_limits
def test_file_menu_import_of_a_bad_file_shows_why_and_changes_nothing(window, qtbot, monkeypatch, tmp_path):
    _stored_chat(window.store)
    before = _snapshot(window.store)
    sidebar_before = len(window.controller.conversations)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "canvas-chat-export", "schema_version": 9, "conversations": []}', encoding="utf-8")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(bad), ""))
    window.chat_files.import_action.trigger()
    box = window.chat_files.message_box
    assert box is not None and box.isVisible()
    assert box.text() == "Nothing was imported." and "schema version 9" in box.informativeText()
    box.accept()
    assert _snapshot(window.store) == before and len(window.controller.conversations) == sidebar_before


@ignore_offscreen_limits
def test_export_all_chats_to_markdown(window, qtbot, monkeypatch, tmp_path):
    _stored_chat(window.store, "First")
    _stored_chat(window.store, "Second")
    target = tmp_path / "all.md"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    dialog = window.chat_files.export_all_chats()
    dialog.markdown_radio.setChecked(True)
    assert not dialog.replay_check.isEnabled()
    with qtbot.waitSignal(window.chat_files.exported):
        dialog.accept()
    text = target.read_text(encoding="utf-8")
    assert "# First\n" in text and "# Second\n" in text and CODE_REPLY.rstrip("\n") in text
