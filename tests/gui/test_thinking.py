"""The thinking toggle on the real worker (tiny model): per conversation, the thought channel kept
apart from the answer and shown collapsed above it, expanding on a click."""

from __future__ import annotations

import pytest

from app.worker.engine_client import EngineClient
from app.window.main_window import MainWindow
from app.chat.store import ChatStore
from tests.gui.window_helpers import TEST_SETTINGS, ignore_offscreen_limits, send_and_wait, wait_model_loaded

pytestmark = [pytest.mark.slow, ignore_offscreen_limits]

THOUGHT = "The sea reflects the sky."
REPLY = f"<|channel>thought\n{THOUGHT}<channel|>Blue."


@pytest.fixture
def window(qtbot, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", REPLY)
    store = ChatStore()
    client = EngineClient(restart_delays_s=(0.05, 0.1, 0.2))
    main = MainWindow(TEST_SETTINGS, store, client)
    main.resize(1000, 700)
    main.show()
    qtbot.waitExposed(main)
    assert main.start_engine(str(tiny_model_dir))
    wait_model_loaded(qtbot, main)
    yield main
    main.close()
    main.client.shutdown()
    store.close()
    main.deleteLater()


def test_thinking_shows_the_thought_collapsed_above_the_answer(qtbot, window):
    toggle = window.thinking_toggle
    assert not toggle.isChecked()
    toggle.setChecked(True)
    message_id = send_and_wait(qtbot, window, "What colour is the sea?")
    thinking_chat = window.controller.current_conversation_id
    message = window.controller.transcript.get(message_id)
    assert message.content == "Blue."
    assert message.stats["reasoning"] == THOUGHT
    assert window.store.get_message(message_id).stats["reasoning"] == THOUGHT  # kept with the chat

    view = window.transcript_view
    shown = view.delegate.shown_text(message)
    assert shown.startswith("[\u25b8 Thought (5 words)]") and THOUGHT not in shown and shown.endswith("Blue.")
    view.toggle_thought(message_id)
    expanded = view.delegate.shown_text(message)
    assert f"> {THOUGHT}" in expanded and expanded.index(THOUGHT) < expanded.index("Blue.")
    view.toggle_thought(message_id)
    assert THOUGHT not in view.delegate.shown_text(message)

    # Per conversation: a new chat starts without thinking; the first one keeps it.
    window.new_chat()
    assert not toggle.isChecked() and not window.controller.thinking
    window.controller.open_conversation(thinking_chat)
    assert toggle.isChecked()
