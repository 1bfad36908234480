"""Recorded vLLM streams (tests/fixtures/vllm_*.sse: the chunks vLLM sends for DiffusionGemma, one
per committed canvas, reasoning and tool calls, usage last) replayed by a local HTTP server and
parsed by `RemoteBackend` into the engine's events; HTTP errors, a slow server, "test connection"."""

from __future__ import annotations

import json
import socket

import pytest

from app.remote.backend import RemoteBackend
from app.remote.server import RemoteServer, model_note, probe
from engine.protocol import ChatMessage, GenerationSettings
from tests.conftest import timeout_ms
from tests.gui.remote_helpers import Recorded, ReplayServer

MODEL = "google/diffusiongemma-26B-A4B-it"
QUESTION = [ChatMessage(role="user", content="How do you write?")]


@pytest.fixture
def replay():
    server = ReplayServer()
    yield server
    server.close()


@pytest.fixture
def backend(qapp, replay):
    remote = RemoteBackend(RemoteServer(replay.base_url, MODEL, api_key="k-123"))
    yield remote
    remote.shutdown()
    remote.deleteLater()


def run_reply(qtbot, backend, thinking=False, settings=None):
    """Sends QUESTION; returns (commits, the final signal's name and payload)."""
    commits, ends = [], []
    backend.canvas_committed.connect(commits.append)
    backend.generation_finished.connect(lambda done: ends.append(("finished", done)))
    backend.generation_failed.connect(lambda error: ends.append(("failed", error)))
    backend.generation_interrupted.connect(lambda request_id: ends.append(("interrupted", request_id)))
    request_id = backend.generate("c1", QUESTION, "Be brief.", settings or GenerationSettings(max_new_tokens=256, seed=3), thinking)
    qtbot.waitUntil(lambda: bool(ends), timeout=timeout_ms(20))
    assert len(ends) == 1
    assert all(c.request_id == request_id for c in commits)
    return commits, ends[0]


def test_a_recorded_vllm_chat_stream_becomes_one_commit_per_canvas_and_done_with_usage(qtbot, replay, backend):
    replay.replay_file("vllm_diffusiongemma_chat.sse")
    commits, (kind, done) = run_reply(qtbot, backend, thinking=True)
    assert kind == "finished"
    assert [c.text for c in commits] == [
        "Block diffusion writes a reply a canvas at a time: ",
        "each canvas of 32 tokens starts as noise and is denoised ",
        "in a few parallel steps, then committed before the next one begins.",
    ]
    assert [c.canvas_index for c in commits] == [0, 1, 2]
    assert commits[-1].reply_text == done.text == "".join(c.text for c in commits)
    assert done.finish_reason == "eos"
    assert done.reasoning == "The user asks how the model writes. Explain canvases briefly.\n"
    stats = done.stats
    assert (stats.new_tokens, stats.prompt_tokens, stats.cached_tokens, stats.canvases) == (96, 21, 16, 3)
    assert stats.tokens_per_s == pytest.approx(96 / stats.wall_s)
    # What went over the wire: vLLM's request shape, the key as a bearer token.
    sent = replay.requests[-1]
    assert sent["model"] == MODEL and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do you write?"}]
    assert (sent["max_tokens"], sent["seed"]) == (256, 3)
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}


def test_a_recorded_vllm_tool_call_stream_is_shown_in_the_reply(qtbot, replay, backend):
    replay.replay_file("vllm_diffusiongemma_tool_call.sse")
    commits, (kind, done) = run_reply(qtbot, backend)
    assert kind == "finished"
    assert commits[0].text == "Let me look that up."
    assert done.text == 'Let me look that up.\n\nTool call: get_weather({"city": "Lima", "unit": "celsius"})'
    assert done.stats.new_tokens == 40
    assert replay.requests[-1]["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (429, (("Retry-After", "7"),), {"error": {"message": "Rate limit reached for the team key", "type": "rate_limit"}},
         "The server is busy: too many requests (429): \u201cRate limit reached for the team key\u201d. It asks to wait 7 s."),
        (503, (), {"object": "error", "message": "The model is still loading", "type": "ServiceUnavailable", "code": 503},
         "The server cannot answer right now (503 Service Unavailable): \u201cThe model is still loading\u201d."),
        (401, (), {"error": {"message": "Unauthorized"}},
         "The server refused the API key (401): \u201cUnauthorized\u201d."),
    ],
)
def test_http_errors_are_plain_messages_with_the_servers_reason(qtbot, replay, backend, status, headers, body, expected):
    replay.chat = Recorded(status, json.dumps(body).encode(), (("Content-Type", "application/json"),) + headers)
    commits, (kind, error) = run_reply(qtbot, backend)
    assert kind == "failed" and commits == []
    assert error.message.startswith(expected)


def test_an_error_inside_the_stream_fails_the_reply_with_its_reason(qtbot, replay, backend):
    replay.chat = Recorded(body=b'data: {"error": {"message": "CUDA out of memory", "code": 500}}\n\n')
    _, (kind, error) = run_reply(qtbot, backend)
    assert kind == "failed" and error.message == "The server reported an error: CUDA out of memory"


def test_a_stream_cut_before_its_end_is_interrupted(qtbot, replay, backend):
    events = replay_fixture("vllm_diffusiongemma_chat.sse").split(b"\n\n")
    replay.chat = Recorded(body=b"\n\n".join(events[:3]) + b"\n\n")  # role, reasoning, one canvas; then closed
    commits, (kind, _) = run_reply(qtbot, backend)
    assert kind == "interrupted" and len(commits) == 1


def test_stop_on_a_slow_server_ends_the_reply_and_closes_the_stream_at_once(qtbot, replay, backend):
    replay.chat = Recorded(body=replay_fixture("vllm_diffusiongemma_chat.sse"), hold_after_first_event=True)
    finished = []
    backend.generation_finished.connect(finished.append)
    request_id = backend.generate("c1", QUESTION)
    qtbot.waitUntil(lambda: len(replay.requests) == 1, timeout=timeout_ms(10))
    stream = backend._streams[request_id]
    qtbot.waitUntil(lambda: stream._socket is not None, timeout=timeout_ms(10))
    backend.cancel(request_id)
    qtbot.waitUntil(lambda: bool(finished), timeout=timeout_ms(5))
    assert finished[0].finish_reason == "cancelled"
    # The thread was blocked reading a server that sends nothing more; the stop woke it up.
    qtbot.waitUntil(lambda: not stream.is_alive(), timeout=timeout_ms(5))
    assert not replay.release.is_set()


def replay_fixture(name: str) -> bytes:
    from tests.gui.remote_helpers import FIXTURES

    return (FIXTURES / name).read_bytes()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_test_connection_verdicts(replay):
    verdict = probe(replay.base_url.removesuffix("/v1"), "k-123")  # "/v1" is added when the path is empty
    assert verdict.ok and verdict.text == "Connected: the server offers 1 model."
    assert [m.id for m in verdict.models] == [MODEL] and verdict.models[0].is_diffusiongemma
    assert "canvas by canvas" in model_note(verdict.models[0])

    replay.models[:] = [{"id": "meta-llama/Llama-3.1-8B-Instruct", "object": "model", "owned_by": "vllm"}]
    other = probe(replay.base_url)
    assert other.ok and not other.models[0].is_diffusiongemma
    assert model_note(other.models[0]).startswith("Not a DiffusionGemma model: allowed.")

    replay.models.clear()
    assert probe(replay.base_url).text == "Connected, but the server lists no models (none loaded yet?)."

    tls = probe(replay.base_url.replace("http://", "https://"))
    assert not tls.ok and tls.text.startswith("TLS error: the secure connection to https://127.0.0.1:")

    gone = probe(f"http://127.0.0.1:{free_port()}/v1")
    assert not gone.ok and gone.text.startswith("Unreachable: nothing answers at http://127.0.0.1:")

    not_api = probe(replay.base_url + "/nothing-here")
    assert not not_api.ok and "answered 404" in not_api.text
