"""EngineClient against the real worker on the tiny model: handshake, load, a streamed reply,
cancel, a crash mid-reply with automatic restart, manual restart, and a clean shutdown."""

from __future__ import annotations

import logging
import os
import signal
import sys

import psutil
import pytest

from app.worker.engine_client import EngineClient, EngineState
from engine.protocol import ChatMessage, GenerationSettings
from tests.conftest import timeout_ms
from tests.gui.conftest import REPLY, start_and_load

SETTINGS = GenerationSettings(max_new_tokens=128, max_denoising_steps=8, seed=1)
HISTORY = [ChatMessage("user", "Say something about diffusion.")]


class EventLog:
    """Every signal of a client, in order, as (name, payload)."""

    def __init__(self, client: EngineClient) -> None:
        self.events: list[tuple[str, object]] = []
        self._hooks = []
        for name in (
            "state_changed", "load_progressed", "model_loaded", "draft_received", "canvas_committed",
            "generation_finished", "generation_failed", "generation_interrupted", "error_received",
        ):
            self._hook(getattr(client, name), lambda payload, name=name: self.events.append((name, payload)))
        self._hook(client.worker_crashed, lambda code, tail: self.events.append(("worker_crashed", (code, tail))))

    def _hook(self, signal, slot) -> None:
        signal.connect(slot)
        self._hooks.append((signal, slot))

    def disconnect(self) -> None:
        for signal, slot in self._hooks:
            signal.disconnect(slot)

    def named(self, name: str) -> list:
        return [payload for event, payload in self.events if event == name]

    def clear(self) -> None:
        self.events.clear()


@pytest.fixture
def engine(shared_engine_client, qtbot):
    client = shared_engine_client.client
    log = EventLog(client)
    log.events.extend(("state_changed", state) for state in shared_engine_client.states)
    qtbot.waitUntil(lambda: client.state == EngineState.READY, timeout=timeout_ms(60))
    yield client, log
    log.disconnect()
    assert client.state == EngineState.READY, "a test left the shared worker busy or broken"


def _generate_and_wait(qtbot, client, seconds=60):
    """Sends one request and returns its Done; fails at once on an error event."""
    outcome = []
    client.generation_finished.connect(outcome.append)
    client.generation_failed.connect(outcome.append)
    try:
        request_id = client.generate("conv-1", HISTORY, "", SETTINGS)
        qtbot.waitUntil(lambda: any(e.request_id == request_id for e in outcome), timeout=timeout_ms(seconds))
    finally:
        client.generation_finished.disconnect(outcome.append)
        client.generation_failed.disconnect(outcome.append)
    (result,) = [e for e in outcome if e.request_id == request_id]
    assert result.TYPE == "done", result
    return result


@pytest.mark.slow
def test_handshake_then_load_with_progress(engine, shared_engine_client):
    client, log = engine
    states = log.named("state_changed")
    assert states[:3] == [EngineState.STARTING, EngineState.LOADING, EngineState.READY]
    assert client.engine_version
    assert client.worker_pid and psutil.pid_exists(client.worker_pid)
    assert shared_engine_client.load_progress, "no load progress was reported"
    assert client.model_info.canvas_length == 16
    assert any("engine worker" in line for line in client.stderr_tail())


@pytest.mark.slow
def test_reply_streams_drafts_commits_then_done(engine, qtbot):
    client, log = engine
    log.clear()
    done = _generate_and_wait(qtbot, client)
    assert done.finish_reason == "eos"
    assert done.text == REPLY
    commits = log.named("canvas_committed")
    assert len(commits) >= 2 and commits[-1].reply_text == REPLY
    assert log.named("draft_received"), "no draft reached the GUI"
    # A draft never arrives after its canvas was committed or after done.
    committed_canvases = set()
    for name, payload in log.events:
        if name == "canvas_committed":
            committed_canvases.add(payload.canvas_index)
        if name == "draft_received":
            assert payload.canvas_index not in committed_canvases
    # READY first, so a slot reacting to the finished reply can send the next one at once.
    assert log.events[-2:] == [("state_changed", EngineState.READY), ("generation_finished", done)]
    assert log.named("state_changed")[0] == EngineState.GENERATING


@pytest.mark.slow
def test_cancel_stops_within_a_step_keeping_committed_canvases(make_engine_client, tiny_model_dir, qtbot, monkeypatch):
    # 0.2 s per step: the second canvas needs about a second more, the cancel a step at most.
    monkeypatch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", REPLY)
    monkeypatch.setenv("CANVAS_CHAT_TEST_STEP_DELAY", "0.2")
    client = make_engine_client()
    log = EventLog(client)
    start_and_load(qtbot, client, tiny_model_dir)
    with qtbot.waitSignal(client.canvas_committed, timeout=timeout_ms(60)) as first_commit:
        request_id = client.generate("conv-1", HISTORY, "", SETTINGS)
    log.clear()
    with qtbot.waitSignal(client.generation_finished, timeout=timeout_ms(30)) as finished:
        client.cancel(request_id)
    log.disconnect()
    done = finished.args[0]
    assert done.finish_reason == "cancelled"
    # Stopped inside the open canvas: it is never committed, and at most the step under way
    # (and one already on its way) still shows.
    assert log.named("canvas_committed") == [], "the open canvas ran to its end after the cancel"
    assert len(log.named("draft_received")) <= 2
    assert done.text == first_commit.args[0].reply_text
    assert len(done.text) < len(REPLY)


@pytest.mark.slow
def test_queued_requests_run_in_turn_and_cancel_of_unknown_is_ignored(engine, qtbot):
    client, log = engine
    client.cancel("no-such-request")
    with qtbot.waitSignals([client.generation_finished, client.generation_finished], timeout=timeout_ms(60)):
        first = client.generate("conv-1", HISTORY, "", SETTINGS)
        second = client.generate("conv-2", HISTORY, "", SETTINGS)
        assert client.state == EngineState.GENERATING
        assert client.active_request_ids() == [first, second]
    assert [d.request_id for d in log.named("generation_finished")[-2:]] == [first, second]


@pytest.mark.slow
def test_worker_killed_mid_reply_crashes_restarts_and_replies_again(
    make_engine_client, tiny_model_dir, qtbot, monkeypatch, caplog
):
    monkeypatch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", REPLY)
    monkeypatch.setenv("CANVAS_CHAT_TEST_STEP_DELAY", "0.05")
    client = make_engine_client()
    log = EventLog(client)
    start_and_load(qtbot, client, tiny_model_dir)
    first_pid = client.worker_pid
    with qtbot.waitSignal(client.draft_received, timeout=timeout_ms(60)):
        request_id = client.generate("conv-1", HISTORY, "", SETTINGS)
    log.clear()
    with caplog.at_level(logging.WARNING, logger="canvas_chat.engine_client"):
        with qtbot.waitSignals(
            [client.worker_crashed, client.generation_interrupted, client.model_loaded],
            timeout=timeout_ms(60),
        ):
            os.kill(first_pid, signal.SIGKILL)
    code, tail = log.named("worker_crashed")[0]
    assert code == -1 and tail, "the crash banner needs the worker's last lines"
    assert log.named("generation_interrupted") == [request_id]
    states = log.named("state_changed")
    assert states[0] == EngineState.RESTARTING or states[:2] == [EngineState.CRASHED, EngineState.RESTARTING]
    assert states[-1] == EngineState.READY
    assert client.worker_pid != first_pid and not psutil.pid_exists(first_pid)
    assert _generate_and_wait(qtbot, client).text == REPLY


@pytest.mark.slow
def test_fault_crash_without_auto_restart_then_manual_restart(
    make_engine_client, tiny_model_dir, qtbot, monkeypatch, caplog
):
    monkeypatch.setenv("CANVAS_CHAT_TEST_FAULT", "crash_after_steps:2")
    client = make_engine_client(auto_restart=False)
    log = EventLog(client)
    start_and_load(qtbot, client, tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="canvas_chat.engine_client"):
        with qtbot.waitSignals([client.worker_crashed, client.generation_interrupted], timeout=timeout_ms(60)):
            client.generate("conv-1", HISTORY, "", SETTINGS)
    code, tail = log.named("worker_crashed")[0]
    assert code == 70
    assert any("test fault" in line for line in tail)
    assert client.state == EngineState.CRASHED
    # Without a worker a request fails at once instead of waiting forever.
    with qtbot.waitSignal(client.generation_failed, timeout=timeout_ms(5)) as failed:
        client.generate("conv-1", HISTORY, "", SETTINGS)
    assert failed.args[0].code == "engine_stopped"
    with qtbot.waitSignal(client.model_loaded, timeout=timeout_ms(60)):
        client.restart()
    assert client.state == EngineState.READY


@pytest.mark.slow
def test_load_failure_then_a_worker_hung_on_stop_is_killed_and_restarted(
    make_engine_client, tiny_model_dir, qtbot, tmp_path, monkeypatch, caplog
):
    # One worker for two faults, to pay for one start: a bad model path, then a hang mid-reply.
    monkeypatch.setenv("CANVAS_CHAT_TEST_FAULT", "hang_after_steps:1")
    client = make_engine_client(cancel_timeout_s=0.5)
    log = EventLog(client)
    with caplog.at_level(logging.WARNING, logger="canvas_chat.engine_client"):
        with qtbot.waitSignal(client.error_received, timeout=timeout_ms(60)) as error:
            client.start(str(tmp_path / "no-such-model"))
        assert error.args[0].code == "model_not_found" and error.args[0].recoverable
        assert client.state == EngineState.READY and client.model_info is None
        with qtbot.waitSignal(client.generation_failed, timeout=timeout_ms(30)) as failed:
            client.generate("conv-1", HISTORY, "", SETTINGS)
        assert failed.args[0].code == "no_model_loaded"

        with qtbot.waitSignal(client.model_loaded, timeout=timeout_ms(60)):
            client.load_model(str(tiny_model_dir))
        request_id = client.generate("conv-1", HISTORY, "", SETTINGS)
        qtbot.waitUntil(lambda: any("hanging" in line for line in client.stderr_tail()), timeout=timeout_ms(60))
        hung_pid = client.worker_pid
        with qtbot.waitSignals(
            [client.worker_crashed, client.generation_interrupted, client.model_loaded], timeout=timeout_ms(60)
        ):
            client.cancel(request_id)
    assert log.named("generation_interrupted") == [request_id]
    assert any("did not respond to Stop" in line for line in log.named("worker_crashed")[0][1])
    assert client.state == EngineState.READY and client.worker_pid != hung_pid


@pytest.mark.slow
def test_shutdown_mid_reply_leaves_no_process(make_engine_client, tiny_model_dir, qtbot, monkeypatch):
    monkeypatch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", REPLY)
    monkeypatch.setenv("CANVAS_CHAT_TEST_STEP_DELAY", "0.05")
    client = make_engine_client()
    log = EventLog(client)
    with qtbot.waitSignal(client.draft_received, timeout=timeout_ms(60)):
        client.start(str(tiny_model_dir))
        request_id = client.generate("conv-1", HISTORY, "", SETTINGS)  # queued until the model is loaded
    pid = client.worker_pid
    client.shutdown()
    assert client.state == EngineState.STOPPED
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # The worker cancels what runs when its stdin closes; if it is gone first, the client says so.
    ended = log.named("generation_interrupted") + [
        d.request_id for d in log.named("generation_finished") if d.finish_reason == "cancelled"
    ]
    assert ended == [request_id]
    assert not log.named("worker_crashed")


def test_malformed_lines_are_logged_and_dropped(qapp, qtbot, caplog):
    client = EngineClient()
    with caplog.at_level(logging.WARNING, logger="canvas_chat.engine_client"):
        with qtbot.assertNotEmitted(client.error_received):
            for line in (b"not json", b"[1]", b'{"type": "nope"}', b'{"type": "done", "request_id": "x"}'):
                client._handle_line(line)
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 4
    client.deleteLater()


def test_draft_throttle_keeps_the_latest_and_never_outlives_a_commit(qapp, qtbot):
    from app.worker.engine_client import _Generation
    from engine import protocol

    client = EngineClient(draft_interval_ms=50)
    request = protocol.Generate(request_id="g", messages=[])
    client._generations["g"] = _Generation(request, sent=True)

    def draft(step, canvas=0):
        return protocol.encode(protocol.Draft("g", canvas, step, 8, f"s{step}", [f"s{step}"], [True], [0])).encode()

    received = []
    client.draft_received.connect(lambda d: received.append((d.canvas_index, d.step_index)))
    arrived = []
    client.draft_arrived.connect(lambda d: arrived.append(d.step_index))
    for step in range(6):
        client._handle_line(draft(step))
    assert received == [(0, 0)]  # the first one at once, the rest wait for the throttle
    qtbot.waitUntil(lambda: received == [(0, 0), (0, 5)], timeout=timeout_ms(2))
    client._handle_line(draft(6))
    client._handle_line(draft(7))
    commit = protocol.CanvasCommitted("g", 0, "x", "x", 1, 8)
    with qtbot.waitSignal(client.canvas_committed, timeout=1000):
        client._handle_line(protocol.encode(commit).encode())
    with qtbot.assertNotEmitted(client.draft_received, wait=120):
        pass
    assert received == [(0, 0), (0, 5)]
    assert arrived == list(range(8))  # the recorder sees every draft
    client._handle_line(draft(0, canvas=1))
    qtbot.waitUntil(lambda: received[-1] == (1, 0), timeout=timeout_ms(2))
    client.deleteLater()


@pytest.mark.parametrize("version", [3, "newer"], ids=["v3-worker-without-images", "newer-worker"])
def test_a_worker_speaking_another_protocol_is_refused(qapp, qtbot, caplog, version):
    from engine import protocol

    client = EngineClient()
    version = protocol.PROTOCOL_VERSION + 1 if version == "newer" else version
    ready = protocol.Ready("hello-1", protocol_version=version, engine_version="9", pid=1)
    with qtbot.waitSignal(client.error_received, timeout=1000) as error:
        client._handle_line(protocol.encode(ready).encode())
    assert (error.args[0].code, error.args[0].recoverable) == ("protocol_mismatch", False)
    assert f"protocol {version}" in error.args[0].message and f"speaks {protocol.PROTOCOL_VERSION}" in error.args[0].message
    assert client.state == EngineState.STOPPED and client.engine_version == ""
    client.deleteLater()


def test_a_state_move_outside_the_transitions_is_logged_as_a_bug(caplog):
    from app.worker.engine_state import TRANSITIONS, next_state

    facts = dict(running=True, crashed=False, stopping=False, restart_pending=False, loading=False, generating=False)
    assert next_state(EngineState.STARTING, handshaken=True, **facts) == EngineState.READY
    assert not caplog.records
    # A worker that is ready without ever having been started is not a move the client makes.
    assert EngineState.READY not in TRANSITIONS[EngineState.STOPPED]
    with caplog.at_level(logging.ERROR, logger="canvas_chat.engine_client"):
        assert next_state(EngineState.STOPPED, handshaken=True, **facts) == EngineState.READY
    assert [r.getMessage() for r in caplog.records] == ["engine state moved stopped -> ready, which is not in TRANSITIONS"]


def test_exit_description_says_how_the_worker_ended_in_words():
    from app.worker.line_process import exit_description

    assert exit_description(3, True) == "exited with status 3"
    if sys.platform != "win32":
        assert exit_description(9, False) == "killed by SIGKILL"
        assert exit_description(11, False) == "killed by SIGSEGV"
