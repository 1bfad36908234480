"""Model ▸ Connect to a server… against Canvas Chat's own API server on the tiny model (a real
server process, real HTTP): connect, pick the model, chat, stop mid-stream, the server killed
mid-reply (partial kept, interrupted, Retry), a wrong key (401 shown plainly), kept through restarts;
and another model (a replayed stream): allowed with a note, plain text, then back to the local engine."""

from __future__ import annotations

import dataclasses
import json

import keyring
import pytest
import shiboken6
from PySide6.QtCore import Qt

from app.chat.store import ChatStore
from app.remote.server import KEYRING_SERVICE, RemoteServer
from app.settings import load_settings
from app.window.main_window import MainWindow
from app.worker.engine_client import EngineClient
from engine import paths
from tests.conftest import timeout_ms
from tests.gui.conftest import REPLY
from app.transcript.delegate import stats_line
from tests.gui.remote_helpers import MemoryKeyring, Recorded, ReplayServer, start_api_server
from tests.gui.window_helpers import TEST_SETTINGS, ignore_offscreen_limits, send_and_wait

pytestmark = [ignore_offscreen_limits]

TOKEN = "s3cret-token"
MODEL = "tiny-diffusiongemma"  # the served model's folder name


@pytest.fixture(autouse=True)
def memory_keyring():
    previous = keyring.get_keyring()
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    yield memory
    keyring.set_keyring(previous)


@pytest.fixture(scope="module")
def api_server(tiny_model_dir):
    # 50 ms per denoising step: a reply takes three canvases of 8 steps, long enough to stop in.
    server = start_api_server(tiny_model_dir, REPLY, token=TOKEN, step_delay="0.05")
    yield server
    server.stop()


def make_window(qtbot, settings=TEST_SETTINGS) -> MainWindow:
    main = MainWindow(settings, ChatStore(), EngineClient())  # the local worker is never started
    main.show()
    qtbot.waitExposed(main)
    return main


def close_window(main: MainWindow) -> None:
    if not shiboken6.isValid(main):
        return  # the test closed it already (a restart)
    main.close()
    main.client.shutdown()
    main.store.close()
    main.deleteLater()


@pytest.fixture
def window(qtbot):
    main = make_window(qtbot)
    yield main
    close_window(main)


def test_connection(qtbot, window, url: str, key: str):
    dialog = window.remote.open_dialog()
    dialog.url_edit.setText(url)
    dialog.key_edit.setText(key)
    with qtbot.waitSignal(dialog.probe_finished, timeout=timeout_ms(20)):
        qtbot.mouseClick(dialog.test_button, Qt.MouseButton.LeftButton)
    return dialog


test_connection.__test__ = False  # a helper, not a test


def connect(qtbot, window, server) -> None:
    dialog = test_connection(qtbot, window, server.base_url, server.token)
    assert dialog.connect_button.isEnabled()
    qtbot.mouseClick(dialog.connect_button, Qt.MouseButton.LeftButton)
    assert window.remote.backend is not None


def test_connect_pick_the_model_and_chat_then_the_backend_is_kept_through_a_restart(qtbot, window, api_server, memory_keyring):
    dialog = test_connection(qtbot, window, api_server.base_url, TOKEN)
    assert dialog.verdict_label.text().startswith("\u2714 Connected")
    assert [dialog.model_combo.itemText(i) for i in range(dialog.model_combo.count())] == [MODEL]
    assert "canvas by canvas" in dialog.model_note.text()
    qtbot.mouseClick(dialog.connect_button, Qt.MouseButton.LeftButton)
    host = api_server.base_url.split("//")[1].split("/")[0]
    assert f"Model: {MODEL} on {host}" in window.empty_label.text()
    assert "a canvas at a time (committed canvases, no denoising steps)" in window.empty_label.text()
    label = window.remote.backend_label
    assert label.isVisibleTo(window) and label.text() == f"\u25cf Remote: {MODEL} at {host} \u00b7 canvas by canvas, no per-step drafts"

    commits = []
    window.remote.backend.canvas_committed.connect(commits.append)
    message_id = send_and_wait(qtbot, window, "What is diffusion?")
    message = window.controller.transcript.get(message_id)
    assert (message.status, message.content) == ("finished", REPLY)
    assert len(commits) == 3 and "".join(c.text for c in commits) == REPLY  # one event per canvas
    assert message.stats["canvases"] == 3 and message.stats["new_tokens"] > 16  # from the usage chunk
    assert message.stats["tokens_per_s"] > 0 and "steps_per_canvas" not in message.stats
    answered = f"Remote \u00b7 {MODEL} at {host}"
    assert window.remote.answered_label.text() == f"Last reply: {answered}"

    # The key went to the keyring, not to the settings file.
    assert memory_keyring.passwords[(KEYRING_SERVICE, api_server.base_url)] == TOKEN
    assert TOKEN not in paths.settings_path().read_text(encoding="utf-8")
    conversation_id = window.controller.current_conversation_id
    close_window(window)

    again = make_window(qtbot, load_settings())
    try:
        assert again.remote.backend is not None and again.remote.backend.server.api_key == TOKEN
        assert again.remote.backend_label.text().startswith(f"\u25cf Remote: {MODEL}")
        again.controller.open_conversation(conversation_id)
        assert again.controller.transcript.get(message_id).answered_by == answered
        assert again.remote.answered_label.text() == f"Last reply: {answered}"
        second = send_and_wait(qtbot, again, "And again?")
        assert again.controller.transcript.get(second).content == REPLY
    finally:
        close_window(again)


def test_stop_mid_stream_ends_the_reply_at_once_and_keeps_its_canvases(qtbot, window, api_server):
    connect(qtbot, window, api_server)
    with qtbot.waitSignal(window.remote.backend.canvas_committed, timeout=timeout_ms(30)) as first:
        window.send("What is diffusion?")
    finished = []
    window.controller.reply_finished.connect(lambda message_id, status: finished.append(status))
    with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(5)):
        qtbot.mouseClick(window.composer.stop_button, Qt.MouseButton.LeftButton)
    assert finished == ["stopped"]
    message = window.controller.transcript.last()
    assert message.status == "stopped"
    assert message.content.startswith(first.args[0].text) and len(message.content) < len(REPLY)
    assert window.remote.backend.active_request_ids() == []
    # The server noticed the hang-up and answers the next question in full.
    second = send_and_wait(qtbot, window, "Once more?")
    assert window.controller.transcript.get(second).content == REPLY


def test_a_wrong_key_is_refused_plainly_in_the_test_and_in_a_chat(qtbot, window, api_server):
    dialog = test_connection(qtbot, window, api_server.base_url, "wrong-key")
    assert dialog.verdict_label.text() == (
        "\u2716 The server refused the API key (401): "
        "\u201cMissing or wrong API token (Authorization: Bearer ...).\u201d. Check the key."
    )
    assert not dialog.connect_button.isEnabled() and dialog.model_combo.count() == 0
    dialog.reject()
    window.remote.use_server(RemoteServer(api_server.base_url, MODEL, "wrong-key"), save=False)
    message_id = send_and_wait(qtbot, window, "Hello?")
    message = window.controller.transcript.get(message_id)
    assert message.status == "error"
    assert message.error.startswith(
        "The server refused the API key (401): \u201cMissing or wrong API token (Authorization: Bearer ...).\u201d"
    )


def test_the_server_killed_mid_reply_keeps_the_partial_reply_marked_interrupted_with_retry(qtbot, window, tiny_model_dir):
    server = start_api_server(tiny_model_dir, REPLY, step_delay="0.05")
    try:
        connect(qtbot, window, server)
        with qtbot.waitSignal(window.remote.backend.canvas_committed, timeout=timeout_ms(30)) as first:
            window.send("What is diffusion?")
        with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(20)) as finished:
            server.process.kill()
        message_id, status = finished.args
        message = window.controller.transcript.get(message_id)
        assert status == "interrupted" and message.status == "interrupted"
        assert message.content.startswith(first.args[0].text) and REPLY.startswith(message.content)
        assert message.error == "The server connection was lost during this reply."
        stored = window.store.get_message(message_id)
        assert (stored.status, stored.content) == ("interrupted", message.content)
        index = window.transcript_model.index(window.transcript_model.rowCount() - 1, 0)
        assert "Retry" in window.transcript_view.delegate.row_geometry(index).links
        # Retry asks again (the server is gone now, so it fails plainly, and the partial reply made way).
        with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(20)) as retried:
            window.transcript_view.trigger_link(message_id, "Retry")
        assert window.controller.transcript.get(message_id) is None
        again = window.controller.transcript.get(retried.args[0])
        assert again.status == "error" and again.error.startswith("Cannot reach the server at 127.0.0.1:")
    finally:
        server.stop()


def test_with_no_keyring_the_key_is_kept_for_this_session_only(qtbot, window, api_server):
    from keyring.backends import fail

    keyring.set_keyring(fail.Keyring())
    dialog = test_connection(qtbot, window, api_server.base_url, TOKEN)
    assert dialog.keyring_note.text().startswith("No system keyring is available")
    qtbot.mouseClick(dialog.connect_button, Qt.MouseButton.LeftButton)
    assert window.statusBar().currentMessage().startswith("No system keyring is available")
    assert window.remote.backend.server.api_key == TOKEN
    assert TOKEN not in paths.settings_path().read_text(encoding="utf-8")
    message_id = send_and_wait(qtbot, window, "Hi?")
    assert window.controller.transcript.get(message_id).content == REPLY


GENERIC_STREAM = "".join(
    "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "llama",
                           "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": finish}]}) + "\n\n"
    for piece, finish in (("Hel", None), ("lo ", None), ("there", None), ("", "stop"))
) + "data: [DONE]\n\n"


def test_another_model_is_allowed_with_a_note_and_shown_as_plain_text_then_local_again(qtbot, window, monkeypatch):
    starts = []
    monkeypatch.setattr(window, "start_engine", lambda *args, **kwargs: starts.append(args))
    replay = ReplayServer(models=[{"id": "meta-llama/Llama-3.1-8B-Instruct", "object": "model", "owned_by": "vllm"}])
    try:
        replay.chat = Recorded(body=GENERIC_STREAM.encode())
        dialog = test_connection(qtbot, window, replay.base_url, "")
        assert dialog.model_note.text().startswith("Not a DiffusionGemma model: allowed.")
        qtbot.mouseClick(dialog.connect_button, Qt.MouseButton.LeftButton)
        assert window.remote.backend_label.text().endswith("\u00b7 plain text, not a DiffusionGemma model")
        assert not window.engine_status.isVisibleTo(window)  # the idle local worker is not what answers
        assert "as plain text (not a DiffusionGemma model)" in window.empty_label.text()
        assert "denoised in place while you watch" not in window.empty_label.text()
        window.apply_settings(dataclasses.replace(window.settings, system_prompt="Be brief."))
        assert starts == []  # saving other settings does not load this PC's model behind the server
        message_id = send_and_wait(qtbot, window, "Hi")
        message = window.controller.transcript.get(message_id)
        assert message.content == "Hello there"
        assert "chat_template_kwargs" not in replay.requests[-1]
        # No usage in this stream: no made-up tokens/s; the first result was a whole chunk, not a draft.
        assert stats_line(message.stats).endswith(" s to first canvas") and "tok/s" not in stats_line(message.stats)
    finally:
        replay.close()
    dialog = window.remote.open_dialog()
    qtbot.mouseClick(dialog.local_button, Qt.MouseButton.LeftButton)
    assert window.remote.backend is None and window.controller.backend is window.client
    assert not window.remote.backend_label.isVisibleTo(window) and window.engine_status.isVisibleTo(window)
    assert load_settings().remote_enabled is False
    assert starts == [()]  # this PC's model is loaded now that it answers again
