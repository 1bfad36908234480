"""The per-chat settings panel and the context meter, on the shared real worker (tiny model):
settings are saved with the chat, the worker receives them with the next reply, a changed system
prompt re-encodes the chat instead of reusing its cached prefix, the meter follows the engine."""

from __future__ import annotations

import dataclasses
import sqlite3
import types

import pytest

from app.chat import store as store_module
from app.chat.chat_settings import ChatSettings
from app.chat.controller import ConversationController
from app.chat.messages import Message
from app.chat.store import ChatStore
from app.settings import Settings
from app.window.chat_panel import ChatPanel
from app.window.composer import Composer
from app.window.context_meter import attach_context_meter, estimate_tokens, overflow_warning, reply_room, tokens_used
from app.window.settings_dialog import SettingsDialog
from app.worker.engine_client import EngineClient, EngineState
from engine import protocol
from tests.conftest import timeout_ms

DEFAULTS = Settings(max_new_tokens=64, max_denoising_steps=8, seed=3, system_prompt="Be kind.")


@pytest.fixture
def controller(shared_engine_client, chat_store, qtbot):
    client = shared_engine_client.client
    qtbot.waitUntil(lambda: client.state == EngineState.READY, timeout=timeout_ms(60))
    controller = ConversationController(chat_store, client, DEFAULTS)
    yield controller
    controller.close()
    assert client.state == EngineState.READY, "a test left the shared worker busy"


@pytest.fixture
def panel(controller, qtbot):
    panel = ChatPanel(controller)
    qtbot.addWidget(panel)
    return panel


@pytest.fixture
def sent_requests(controller, monkeypatch):
    """Every Generate request as it goes onto the worker's stdin (decoded back from the wire)."""
    client = controller.client
    seen: list[protocol.Generate] = []
    send = client._send

    def recording_send(message):
        decoded = protocol.decode(protocol.encode(message))
        if isinstance(decoded, protocol.Generate):
            seen.append(decoded)
        return send(message)

    monkeypatch.setattr(client, "_send", recording_send)
    return seen


def _reply(qtbot, controller, text: str) -> dict:
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(60)) as finished:
        assert controller.send(text) is not None
    message = controller.transcript.get(finished.args[0])
    assert finished.args[1] == "finished", message.error
    return message.stats


def test_panel_edits_are_saved_with_the_chat_and_used_by_its_next_reply(controller, panel, sent_requests, qtbot):
    _reply(qtbot, controller, "Hello there")
    chat = controller.current_conversation_id
    assert panel.system_prompt.toPlainText() == "Be kind."  # a new chat starts from Settings
    assert panel.steps.value() == 8 and panel.seed.text() == "3"

    panel.system_prompt.selectAll()
    qtbot.keyClicks(panel.system_prompt, "Answer in French.")
    panel.steps.setValue(5)
    panel.seed.setText("1234")
    panel.max_new_tokens.setValue(16)
    assert panel.preset.currentData() == "custom"
    stored = controller.store.conversation_settings(chat)
    assert (stored["system_prompt"], stored["max_denoising_steps"], stored["seed"], stored["max_new_tokens"]) == (
        "Answer in French.",
        5,
        1234,
        16,
    )

    stats = _reply(qtbot, controller, "And now?")
    request = sent_requests[-1]
    assert request.conversation_id == chat
    assert request.system_prompt == "Answer in French."
    assert (request.settings.max_denoising_steps, request.settings.seed, request.settings.max_new_tokens) == (5, 1234, 16)
    # The worker used them: one 16-token canvas (cut at the length), at most 5 steps.
    assert stats["finish_reason"] == "length" and stats["new_tokens"] <= 16
    assert stats["steps_per_canvas"] <= 5

    # Another chat starts from the defaults; the first keeps its own, in memory and in the store.
    controller.new_conversation()
    assert panel.system_prompt.toPlainText() == "Be kind." and panel.steps.value() == 8
    controller.open_conversation(chat)
    assert panel.system_prompt.toPlainText() == "Answer in French." and panel.max_new_tokens.value() == 16
    reopened = ConversationController(ChatStore(), EngineClient(), DEFAULTS)  # as after a restart
    reopened.open_conversation(chat)
    assert reopened.chat_settings == controller.chat_settings
    assert reopened.chat_settings.seed == 1234
    reopened.close()
    reopened.store.close()


def test_a_changed_system_prompt_reencodes_the_chat_instead_of_reusing_its_cache(controller, panel, qtbot):
    first = _reply(qtbot, controller, "What is a canvas?")
    assert first["cached_tokens"] == 0
    same = _reply(qtbot, controller, "Tell me more.")
    assert same["cached_tokens"] > 0  # an unchanged chat reuses its prefix

    panel.system_prompt.setPlainText("You are a pirate.")
    changed = _reply(qtbot, controller, "And then?")
    assert changed["cached_tokens"] == 0, "a stale prefix (the old system prompt) was reused"
    assert changed["prompt_tokens"] > same["prompt_tokens"]
    again = _reply(qtbot, controller, "Go on.")
    assert again["cached_tokens"] > 0  # the new prompt's prefix is cached from here on


def test_values_the_engine_would_refuse_are_shown_and_not_applied(controller, panel, qtbot):
    controller.new_conversation()
    before = controller.chat_settings
    panel.t_min.setValue(2.0)  # above t_max (0.8)
    assert panel.problems.isVisible() or not panel.isVisible()
    assert "t_max must be greater than t_min" in panel.problems.text()
    assert controller.chat_settings == before
    panel.t_min.setValue(0.3)
    assert not panel.problems.text() and controller.chat_settings.t_min == 0.3

    panel.seed.setText("99999999999999999999")  # above 2**64 - 1: SETTING_RANGES["seed"]
    assert "seed must be" in panel.problems.text()
    assert controller.chat_settings.seed == 3
    with pytest.raises(ValueError, match="t_max must be greater"):
        controller.set_chat_settings(dataclasses.replace(controller.chat_settings, t_min=1.0, t_max=0.5))

    panel.preset.setCurrentIndex(panel.preset.findData("fast"))
    assert controller.chat_settings.preset == "custom"  # still refused while the seed is bad
    panel.seed.setText("")
    assert controller.chat_settings.seed is None
    panel.preset.setCurrentIndex(panel.preset.findData("balanced"))
    panel.preset.setCurrentIndex(panel.preset.findData("fast"))
    assert (controller.chat_settings.preset, controller.chat_settings.max_denoising_steps) == ("fast", 12)


def test_edits_before_the_first_message_go_to_the_chat_it_creates(controller, panel, qtbot):
    assert controller.current_conversation_id == ""
    panel.system_prompt.setPlainText("Short answers.")
    panel.thinking.setChecked(True)
    controller.send("Hi")
    qtbot.waitUntil(lambda: not controller.is_generating, timeout=timeout_ms(60))
    chat = controller.current_conversation_id
    stored = controller.store.conversation_settings(chat)
    assert stored["system_prompt"] == "Short answers." and stored["thinking"] is True


def test_the_settings_dialog_sets_the_default_seed(qtbot):
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    assert dialog.seed.text() == ""
    dialog.seed.setText("42")
    assert dialog.edited_settings().seed == 42 and dialog.ok_button.isEnabled()
    dialog.seed.setText("18446744073709551616")  # 2**64
    assert not dialog.ok_button.isEnabled() and "seed must be" in dialog.problems.text()
    dialog.seed.setText("")
    assert dialog.edited_settings().seed is None and dialog.ok_button.isEnabled()


@pytest.mark.log_expected("chat settings: ignoring bad value 'x' for seed")
def test_a_chat_from_before_the_migration_follows_the_settings_defaults(qapp, tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for migration in store_module.MIGRATIONS[:2]:  # the schema before per-chat settings
        migration(db)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO conversations (id, title, created, updated) VALUES ('old', 'Old chat', 1, 1)")
    db.close()
    with ChatStore(path) as store:
        assert store.schema_version == store_module.SCHEMA_VERSION
        assert store.conversation_settings("old") is None
        controller = ConversationController(store, EngineClient(), DEFAULTS)
        controller.open_conversation("old")
        assert controller.chat_settings == ChatSettings.from_settings(DEFAULTS)
        controller.settings = dataclasses.replace(DEFAULTS, system_prompt="New default.")
        assert controller.chat_settings.system_prompt == "New default."
        store._db.execute("UPDATE conversations SET settings = '{\"seed\": \"x\", \"max_denoising_steps\": 7}' WHERE id = 'old'")
        controller._chat_settings.forget("old")
        assert (controller.chat_settings.seed, controller.chat_settings.max_denoising_steps) == (3, 7)
        controller.close()


# ---------------------------------------------------------------------------- the context meter


def test_meter_arithmetic():
    assert estimate_tokens("") == 0 and estimate_tokens("abcd" * 100) == 104
    assert reply_room(64, 16) == 64 and reply_room(65, 16) == 80
    msgs = [types.SimpleNamespace(role="assistant", stats={"prompt_tokens": 30, "new_tokens": 12}),
            types.SimpleNamespace(role="user", stats=None)]
    assert tokens_used(msgs) == 42 and tokens_used([]) == 0
    assert overflow_warning(100, 10, 4096, 64) == ""
    warning = overflow_warning(4000, 50, 4096, 64)
    assert "4,000 of 4,096" in warning and "an estimate" in warning


def test_meter_follows_the_engine_and_warns_before_an_overflow(controller, qtbot):
    composer = Composer()
    qtbot.addWidget(composer)
    meter = attach_context_meter(types.SimpleNamespace(composer=composer, controller=controller, client=controller.client))
    info = controller.client.model_info
    assert info.context_window == 4096  # the tiny model's max_position_embeddings, from the worker
    assert meter.label.text() == "Context 0 / 4,096"
    stats = _reply(qtbot, controller, "How long is this chat?")
    used = stats["prompt_tokens"] + stats["new_tokens"]
    assert used > 0 and meter.label.text() == f"Context {used:,} / 4,096"
    assert meter.bar.value() == used

    composer.set_text("word " * 3400)  # ~4,250 estimated tokens: more than the window
    assert meter.warning.isVisibleTo(composer) and "an estimate" in meter.warning.text()
    with qtbot.waitSignal(controller.reply_finished, timeout=timeout_ms(60)) as finished:
        controller.send(composer.text())
    message = controller.transcript.get(finished.args[0])
    assert finished.args[1] == "error" and "reads at most 4,096" in message.error  # the engine agrees
    composer.set_text("A short one.")
    assert not meter.warning.isVisibleTo(composer)

    controller.new_conversation()
    assert meter.label.text() == "Context 0 / 4,096"


@pytest.mark.qt_log_ignore("This plugin does not support (propagateSizeHints|raise)")
def test_a_chats_settings_travel_through_json_export_and_import(qtbot, monkeypatch, tmp_path):
    from PySide6.QtWidgets import QFileDialog

    from app.window.main_window import MainWindow

    store = ChatStore()
    window = MainWindow(DEFAULTS, store, EngineClient())
    qtbot.addWidget(window)
    window.show()
    try:
        window.controller.new_conversation()
        window.chat_panel.system_prompt.setPlainText("Reply like a sailor.")
        window.chat_panel.seed.setText("99")
        mine = window.controller.chat_settings
        chat = window.controller.current_conversation_id
        store.add_message(Message(role="user", content="Ahoy?", conversation_id=chat))
        target = tmp_path / "chat"
        monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), a[3] if len(a) > 3 else ""))
        window.chat_files.export_chat_action.trigger()
        with qtbot.waitSignal(window.chat_files.exported):
            window.chat_files.options_dialog.accept()
        monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(tmp_path / "chat.json"), ""))
        with qtbot.waitSignal(window.chat_files.imported):
            window.chat_files.import_action.trigger()
        assert window.controller.chat_settings == mine  # the imported copy, now open
        assert window.chat_panel.system_prompt.toPlainText() == "Reply like a sailor." and window.chat_panel.seed.text() == "99"
    finally:
        window.close()
        store.close()
