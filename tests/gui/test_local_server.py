"""Settings ▸ Local server on the real worker (tiny model): the toggle, the base URL, the request
log, a busy port, and a chat in the window while an API stream runs (both complete, in order)."""

from __future__ import annotations

import dataclasses
import socket
import threading

import pytest
from PySide6.QtGui import QGuiApplication

from app.worker.engine_client import EngineClient
from app.window.main_window import MainWindow
from app.chat.store import ChatStore
from tests.conftest import TIMEOUT_SCALE, timeout_ms
from tests.gui.window_helpers import TEST_SETTINGS, ignore_offscreen_limits, send_and_wait, wait_model_loaded

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.slow, ignore_offscreen_limits]

# Several 16-token canvases, so an API stream is still running when the window's turn is asked for.
REPLY = " ".join(["Each block starts as noise and settles into text, one canvas after another."] * 3)
SETTINGS = dataclasses.replace(TEST_SETTINGS, max_new_tokens=512)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def window(qtbot, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", REPLY)
    monkeypatch.setenv("CANVAS_CHAT_TEST_STEP_DELAY", "0.04")
    store = ChatStore()
    client = EngineClient(restart_delays_s=(0.05, 0.1, 0.2))
    main = MainWindow(SETTINGS, store, client)
    main.show()
    qtbot.waitExposed(main)
    assert main.start_engine(str(tiny_model_dir))
    wait_model_loaded(qtbot, main)
    yield main
    main.close()
    main.client.shutdown()
    store.close()
    main.deleteLater()


def turn_on(qtbot, window, port: int):
    dialog = window.open_local_server()
    dialog.port.setValue(port)
    with qtbot.waitSignal(window.client.api_server_started, timeout=timeout_ms(30)):
        dialog.enabled.setChecked(True)
    return dialog


def test_toggle_serves_the_model_copies_the_url_and_logs_each_request(qtbot, window):
    port = free_port()
    dialog = turn_on(qtbot, window, port)
    base_url = f"http://127.0.0.1:{port}/v1"
    assert dialog.url_field.text() == base_url
    assert base_url in dialog.status.text()
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == base_url
    assert window.settings.api_port == port  # remembered for next time

    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=60 * TIMEOUT_SCALE)
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == REPLY
    qtbot.waitUntil(lambda: dialog.log_table.rowCount() == 1, timeout=timeout_ms(30))
    cells = [dialog.log_table.item(0, column).text() for column in range(5)]
    assert cells[1:3] == ["POST /v1/chat/completions", "200"]
    assert int(cells[3]) == answer.usage.completion_tokens and float(cells[4]) > 0

    with qtbot.waitSignal(window.client.api_server_stopped, timeout=timeout_ms(30)):
        dialog.enabled.setChecked(False)
    assert dialog.url_field.text() == "" and not dialog.copy_button.isEnabled()
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


def test_a_busy_port_is_reported_and_the_toggle_goes_back_off(qtbot, window):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        dialog = window.open_local_server()
        dialog.port.setValue(squatter.getsockname()[1])
        with qtbot.waitSignal(window.client.api_server_failed, timeout=timeout_ms(30)):
            dialog.enabled.setChecked(True)
    assert "in use" in dialog.status.text()
    assert not dialog.enabled.isChecked() and dialog.port.isEnabled()


def test_a_chat_in_the_window_waits_for_a_running_api_stream_and_both_complete(qtbot, window, monkeypatch):
    port = free_port()
    turn_on(qtbot, window, port)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120 * TIMEOUT_SCALE)
    gui_drafted = threading.Event()
    window.client.draft_arrived.connect(lambda _draft: gui_drafted.set())
    first_chunk = threading.Event()
    chunks: list[tuple[str, bool]] = []  # (content, whether the window had a draft by then)
    failures: list[BaseException] = []

    def stream() -> None:
        try:
            for chunk in client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Stream it"}], stream=True
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks.append((chunk.choices[0].delta.content, gui_drafted.is_set()))
                    first_chunk.set()
        except BaseException as exc:
            failures.append(exc)
        finally:
            first_chunk.set()

    api_thread = threading.Thread(target=stream, name="api-stream-client")
    api_thread.start()
    try:
        qtbot.waitUntil(first_chunk.is_set, timeout=timeout_ms(60))
        message_id = send_and_wait(qtbot, window, "And in the window?")
    finally:
        api_thread.join(60 * TIMEOUT_SCALE)
    assert not failures and not api_thread.is_alive()
    assert "".join(content for content, _ in chunks) == REPLY
    # First come, first served: the window's reply began only after the API stream (every
    # chunk but the last, which races the window's first draft through another pipe).
    assert len(chunks) >= 3 and not any(drafted for _, drafted in chunks[:-1])
    assert window.controller.transcript.get(message_id).content == REPLY
