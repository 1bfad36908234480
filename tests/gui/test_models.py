"""The plain transcript/conversation lists and their Qt adapters (checked by qtmodeltester)."""

from __future__ import annotations

import sys

import pytest
from PySide6.QtCore import Qt

from app.chat.messages import Conversation, ConversationList, DraftState, Message, Transcript
from app.chat.qt_models import ConversationListModel, ConversationRole, MessageRole, TranscriptListModel


def _messages(count: int) -> list[Message]:
    return [Message(role="user" if i % 2 == 0 else "assistant", content=f"m{i}") for i in range(count)]


def test_transcript_observers_hear_every_change():
    transcript = Transcript("c", _messages(2))
    heard = []
    transcript.inserted.connect(lambda i, m: heard.append(("inserted", i, m.content)))
    transcript.changed.connect(lambda i, m, names: heard.append(("changed", i, names)))
    transcript.removed.connect(lambda i, m: heard.append(("removed", i, m.content)))
    extra = Message(role="assistant", content="")
    transcript.append(extra)
    transcript.update(extra.id, content="hello", status="streaming")
    transcript.update(extra.id, content="hello")  # no change: no callback
    assert [m.content for m in transcript.remove_from(1)] == ["m1", "hello"]
    assert heard == [
        ("inserted", 2, ""),
        ("changed", 2, ("content", "status")),
        ("removed", 2, "hello"),
        ("removed", 1, "m1"),
    ]
    assert transcript.last().content == "m0"


def test_transcript_model_passes_qtmodeltester(qtmodeltester):
    transcript = Transcript("c", _messages(3))
    model = TranscriptListModel(transcript)
    qtmodeltester.check(model, force_py=True)
    qtmodeltester.check(model)
    reply = Message(role="assistant", content="", status="streaming")
    transcript.append(reply)
    transcript.update(reply.id, draft=DraftState(0, 1, 8, ("a",), (True,), (0,)))
    transcript.move(reply.id, 0)
    transcript.move(reply.id, 3)
    transcript.remove(transcript[0].id)
    transcript.load("other", _messages(5))
    assert model.rowCount() == 5
    model.detach()


def test_transcript_model_roles_and_change_signals(qtbot):
    transcript = Transcript("c", _messages(1))
    model = TranscriptListModel(transcript)
    reply = Message(role="assistant", content="", status="streaming", stats={"tokens_per_s": 3.0})
    with qtbot.waitSignal(model.rowsInserted, timeout=1000):
        transcript.append(reply)
    index = model.index(1, 0)
    assert model.data(index, MessageRole.ROLE) == "assistant"
    assert model.data(index, MessageRole.STATUS) == "streaming"
    assert model.data(index, MessageRole.STATS) == {"tokens_per_s": 3.0}
    assert model.data(index, MessageRole.MESSAGE) is reply
    assert model.data(index, MessageRole.HAS_REPLAY) is False
    draft = DraftState(0, 2, 8, ("x", "y"), (True, False), (0, 3))
    with qtbot.waitSignal(model.dataChanged, timeout=1000) as blocker:
        transcript.update(reply.id, draft=draft)
    assert blocker.args[2] == [MessageRole.DRAFT]
    assert model.data(index, MessageRole.DRAFT) == draft
    with qtbot.waitSignal(model.dataChanged, timeout=1000) as blocker:
        transcript.update(reply.id, content="done", draft=None)
    # A screen reader hears the new text too: the accessible text and description change with it.
    assert set(blocker.args[2]) == {
        Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.AccessibleTextRole, Qt.ItemDataRole.AccessibleDescriptionRole,
        MessageRole.CONTENT, MessageRole.DRAFT,
    }
    assert model.data(index) == "done"
    assert b"draft" in model.roleNames().values()
    model.detach()


def test_conversation_model_passes_qtmodeltester(qtmodeltester, qtbot):
    conversations = ConversationList([Conversation(title=f"c{i}", updated=10 - i) for i in range(4)])
    model = ConversationListModel(conversations)
    qtmodeltester.check(model, force_py=True)
    qtmodeltester.check(model)
    last = conversations[3]
    with qtbot.waitSignal(model.rowsMoved, timeout=1000):
        conversations.touch(last.id, updated=100)
    assert model.data(model.index(0, 0)) == "c3"
    assert model.data(model.index(0, 0), ConversationRole.UPDATED) == 100
    conversations.move(last.id, 3)
    assert [conversations[i].title for i in range(4)] == ["c0", "c1", "c2", "c3"]
    conversations.insert_sorted(Conversation(title="middle", updated=8.5))
    assert model.row_of(conversations[2].id) == 2 and conversations[2].title == "middle"
    conversations.update(conversations[0].id, title="renamed")
    assert model.data(model.index(0, 0), ConversationRole.TITLE) == "renamed"
    conversations.remove(conversations[1].id)
    assert model.rowCount() == 4 and model.row_of("missing") == -1
    model.detach()



@pytest.mark.skipif(sys.version_info >= (3, 12), reason="None/True/False are immortal from Python 3.12 (PEP 683)")
def test_many_emits_from_python_cannot_exhaust_true_or_none():
    """PySide6 6.12.0 on CPython 3.11 drops a reference to True on every emit() (and to None on
    void calls); importing the Qt models must bring app.qt_compat's fix with it."""

    from PySide6.QtCore import QObject, Signal

    class Source(QObject):
        fired = Signal(object)

    source = Source()
    received = []
    source.fired.connect(received.append)
    before = {"True": sys.getrefcount(True), "None": sys.getrefcount(None)}
    for index in range(20000):
        source.fired.emit(index)
    assert len(received) == 20000
    after = {"True": sys.getrefcount(True), "None": sys.getrefcount(None)}
    for name in before:
        # Either this PySide6 does not leak (the pin keeps 6.12 out), or the guard's reserve holds.
        assert after[name] >= before[name] - 100 or after[name] > 1 << 30, (name, before[name], after[name])


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="None/True/False are immortal from Python 3.12 (PEP 683)")
def test_the_guard_gives_none_true_and_false_a_reserve_on_an_affected_pyside(monkeypatch):
    from app import qt_compat

    monkeypatch.setattr(qt_compat, "_affected_pyside", lambda: True)
    qt_compat.pin_singletons()
    for singleton in (None, True, False):
        assert sys.getrefcount(singleton) > qt_compat._RESERVE // 2, singleton
