"""The chat database survives the app being killed between (and during) writes."""

from __future__ import annotations

import selectors
import signal
import subprocess
import time

from app.chat.store import ChatStore
from engine.paths import database_path
from tests.conftest import PYTHON, TIMEOUT_SCALE, python_env

WRITER = r"""
import sys
from app.chat.messages import Message
from app.chat.store import ChatStore

store = ChatStore()
conversation = store.create_conversation("killed")
print("conversation", conversation.id, flush=True)
i = 0
while True:
    store.add_message(Message(role="user", content=f"question {i} " + "q" * (i % 500), conversation_id=conversation.id))
    reply = Message(role="assistant", content="", conversation_id=conversation.id, status="streaming")
    store.add_message(reply)
    store.update_message(reply.id, content=f"answer {i} " + "a" * (i * 37 % 3000), status="finished")
    print("committed", i, flush=True)
    i += 1
"""

COMMITTED_BEFORE_KILL = 40


def test_database_survives_sigkill_between_writes():
    process = subprocess.Popen(
        [PYTHON, "-c", WRITER], stdout=subprocess.PIPE, text=True, env=python_env()
    )
    committed = -1
    conversation_id = ""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 60 * TIMEOUT_SCALE
    try:
        while committed < COMMITTED_BEFORE_KILL and time.monotonic() < deadline:
            if not selector.select(timeout=1):
                continue
            line = process.stdout.readline()
            assert line, "the writer exited early"
            kind, value = line.split()
            if kind == "conversation":
                conversation_id = value
            else:
                committed = int(value)
        # Killed while it is in the middle of further writes.
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10 * TIMEOUT_SCALE)
    finally:
        selector.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    assert committed >= COMMITTED_BEFORE_KILL

    # Killed mid-write in WAL mode: the log of committed writes is still there for the reopen.
    wal = database_path().with_name(database_path().name + "-wal")
    assert wal.exists() and wal.stat().st_size > 0, "the killed writer left no write-ahead log"
    with ChatStore() as store:
        messages = store.messages(conversation_id)
        integrity = store._db.execute("PRAGMA integrity_check").fetchone()[0]
    assert integrity == "ok"
    users = [m for m in messages if m.role == "user"]
    replies = [m for m in messages if m.role == "assistant"]
    assert len(users) > committed
    for i, message in enumerate(users):
        assert message.content == f"question {i} " + "q" * (i % 500)
    for i, reply in enumerate(replies):
        if i <= committed:
            assert (reply.status, reply.content) == ("finished", f"answer {i} " + "a" * (i * 37 % 3000))
        elif reply.status == "interrupted":  # inserted, killed before its final write
            assert reply.content == ""
        else:
            assert (reply.status, reply.content) == ("finished", f"answer {i} " + "a" * (i * 37 % 3000))
    assert len(replies) in (len(users), len(users) - 1)
