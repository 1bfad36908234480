"""The local OpenAI-compatible server, driven by the official `openai` client against a tiny model.

The server runs in this process exactly as in the worker: the engine loop on a thread of its
own takes HTTP requests from the same queue as the GUI's. Replies are steered with the real
worker's forced-reply test switch.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import subprocess
import sys
import threading

import pytest

from engine import protocol as p
from engine import test_switches
from engine.api.server import ApiServer, BindRefused
from tests.conftest import REPO_ROOT, TIMEOUT_SCALE, python_env

openai = pytest.importorskip("openai")

WAIT_S = 60 * TIMEOUT_SCALE
# Long enough to need several 16-token canvases of the tiny model.
LONG_REPLY = "The quick brown fox jumps over the lazy dog. Canvas Chat runs DiffusionGemma on your own PC."
TOOL_CALL = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class LoopHarness:
    """The worker's engine loop on a thread, a record of its events, and the HTTP server."""

    def __init__(self, model_dir):
        from engine.worker import CancelRegistry, Engine

        self.events: list = []
        self.logged = threading.Condition()
        self.requests: queue.Queue = queue.Queue()
        self.engine = Engine(self._emit, CancelRegistry())
        self.engine.submit = self.requests.put
        self.engine.handle(p.LoadModel("load", str(model_dir), device="cpu"))
        assert self.engine.loaded is not None, self.events
        self.engine.handle(p.StartApiServer("api", "127.0.0.1", 0))
        self.server = self.engine.api_server
        self.thread = threading.Thread(target=self._loop, name="test-engine-loop", daemon=True)
        self.thread.start()

    def _emit(self, event) -> None:
        with self.logged:
            self.events.append(event)
            self.logged.notify_all()

    def _loop(self) -> None:
        while (request := self.requests.get()) is not None:
            self.engine.handle(request)

    def client(self, **kwargs):
        return openai.OpenAI(base_url=self.server.base_url, api_key="none", max_retries=0, timeout=WAIT_S, **kwargs)

    def wait_for_log(self, predicate) -> p.ApiRequestLogged:
        with self.logged:
            found = self.logged.wait_for(
                lambda: next((e for e in self.events if isinstance(e, p.ApiRequestLogged) and predicate(e)), None),
                timeout=WAIT_S,
            )
        assert found, [e for e in self.events if isinstance(e, p.ApiRequestLogged)]
        return found

    def close(self) -> None:
        self.engine.stop_api_server()
        self.requests.put(None)
        self.thread.join(WAIT_S)


@pytest.fixture(scope="module")
def harness(tiny_model_dir):
    loop = LoopHarness(tiny_model_dir)
    yield loop
    loop.close()


@pytest.fixture
def force(monkeypatch):
    def set_reply(text: str) -> None:
        monkeypatch.setenv(test_switches.FORCE_REPLY, text)

    return set_reply


def test_models_lists_the_loaded_model(harness, tiny_model_dir):
    models = harness.client().models.list()
    assert [m.id for m in models] == [tiny_model_dir.name]


def test_plain_completion(harness, force):
    force("Paris.")
    answer = harness.client().completions.create(model="tiny", prompt="The capital of France is", max_tokens=32)
    assert answer.choices[0].text == "Paris."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens > 0


def test_non_streamed_chat_reports_usage(harness, force):
    force("Hello there.")
    answer = harness.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == "Hello there."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0


def test_streamed_chat_sends_one_chunk_per_canvas_and_usage(harness, force):
    force(LONG_REPLY)
    stream = harness.client().chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Tell me about the fox"}],
        stream=True,
        stream_options={"include_usage": True},
    )  # no max_tokens: the server's default budget, not the checkpoint's single canvas
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == LONG_REPLY
    # One chunk per committed 16-token canvas, not one per token and not one at the end.
    assert 2 <= len(pieces) <= usage.completion_tokens // 8
    assert finish == "stop"
    assert usage.completion_tokens > 16


def test_drafts_are_streamed_only_behind_the_extension_flag(harness, force):
    force("Blue.")
    raw = harness.client().chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "Colour?"}], stream=True, extra_body={"stream_drafts": True}
    )
    drafts = [chunk.model_extra.get("canvas_draft") for chunk in raw.parse()]
    assert any(d and "step_index" in d for d in drafts)
    plain = harness.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Colour?"}], stream=True)
    assert not any(chunk.model_extra.get("canvas_draft") for chunk in plain)


def test_tool_call_round_trip(harness, force):
    client = harness.client()
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    force(TOOL_CALL)
    first = client.chat.completions.create(model="tiny", messages=question, tools=[WEATHER_TOOL], max_tokens=128)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call")

    force("It is sunny in Paris.")
    follow_up = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"},
    ]
    second = client.chat.completions.create(model="tiny", messages=follow_up, tools=[WEATHER_TOOL], max_tokens=128)
    assert second.choices[0].message.content == "It is sunny in Paris."
    assert second.choices[0].finish_reason == "stop"
    # The call and its result went into the prompt.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 20


def test_streamed_tool_call_arrives_as_delta_tool_calls(harness, force):
    force(TOOL_CALL)
    stream = harness.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL], stream=True, max_tokens=128
    )
    calls, finish = [], None
    for chunk in stream:
        if chunk.choices:
            calls.extend(chunk.choices[0].delta.tool_calls or [])
            finish = chunk.choices[0].finish_reason or finish
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert finish == "tool_calls"


def test_tools_are_declared_to_the_model_unless_tool_choice_is_none(harness, force):
    force("Fine.")
    client = harness.client()
    question = [{"role": "user", "content": "Weather?"}]
    plain = client.chat.completions.create(model="tiny", messages=question)
    with_tools = client.chat.completions.create(model="tiny", messages=question, tools=[WEATHER_TOOL])
    tools_off = client.chat.completions.create(model="tiny", messages=question, tools=[WEATHER_TOOL], tool_choice="none")
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens
    assert tools_off.usage.prompt_tokens == plain.usage.prompt_tokens


def test_thinking_on_returns_the_thought_channel_as_reasoning_content(harness, force):
    force("<|channel>thought\nThe sea is blue.<channel|>Blue.")
    client = harness.client()
    question = [{"role": "user", "content": "What colour is the sea?"}]
    on = client.chat.completions.create(model="tiny", messages=question, max_tokens=64, extra_body={"thinking": True})
    assert on.choices[0].message.content == "Blue."
    assert on.choices[0].message.model_extra.get("reasoning_content") == "The sea is blue."

    force("Blue.")
    off = client.chat.completions.create(model="tiny", messages=question, max_tokens=64)
    assert off.choices[0].message.content == "Blue."
    assert not off.choices[0].message.model_extra.get("reasoning_content")
    # Thinking on puts <|think|> in a system turn; off keeps the plain prompt.
    assert on.usage.prompt_tokens > off.usage.prompt_tokens


def test_window_generate_with_thinking_keeps_the_thought_apart_from_the_answer(harness, force):
    force("<|channel>thought\nThe sea is blue.<channel|>Blue.")
    for thinking in (True, False):
        request = p.Generate(
            f"gen-thinking-{thinking}",
            [p.ChatMessage("user", "What colour is the sea?")],
            settings=p.GenerationSettings(max_new_tokens=64),
            thinking=thinking,
        )
        harness.requests.put(request)
        with harness.logged:
            assert harness.logged.wait_for(
                lambda: any(isinstance(e, p.Done) and e.request_id == request.request_id for e in harness.events),
                timeout=WAIT_S,
            )
    on, off = [next(e for e in harness.events if isinstance(e, p.Done) and e.request_id == f"gen-thinking-{t}") for t in (True, False)]
    assert (on.text, on.reasoning) == ("Blue.", "The sea is blue.")
    # Thinking off: the prompt's thought channel is already closed, so nothing is taken apart.
    assert off.reasoning == "" and on.stats.prompt_tokens > off.stats.prompt_tokens


def test_a_resent_conversation_reuses_the_kv_cache(harness, force):
    force("Paris.")
    client = harness.client()
    history = [{"role": "user", "content": "Capital of France?"}]
    first = client.chat.completions.create(model="tiny", messages=history)
    history += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "And Peru?"}]
    force("Lima.")
    second = client.chat.completions.create(model="tiny", messages=history)
    assert second.choices[0].message.content == "Lima."
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    edited = [{"role": "user", "content": "Capital of Spain?"}, *history[1:]]
    third = client.chat.completions.create(model="tiny", messages=edited)
    assert third.usage.prompt_tokens_details.cached_tokens == 0


def test_stop_sequence_cuts_the_reply(harness, force):
    force(LONG_REPLY)
    answer = harness.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Fox?"}], stop=["lazy"], max_tokens=256
    )
    assert answer.choices[0].message.content == "The quick brown fox jumps over the "
    assert answer.choices[0].finish_reason == "stop"


def test_client_disconnect_mid_stream_cancels_and_the_next_request_works(harness, force, monkeypatch, caplog):
    force(LONG_REPLY * 4)
    monkeypatch.setenv(test_switches.STEP_DELAY, "0.05")
    caplog.set_level(logging.INFO, logger="canvas_chat.engine.api")
    finished = threading.Event()
    outcomes: list[str] = []

    class Outcome(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("API request"):
                outcomes.append(message)
                finished.set()

    handler = Outcome()
    logging.getLogger("canvas_chat.engine.api").addHandler(handler)
    try:
        stream = harness.client().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Long story"}], stream=True, max_tokens=1024
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # the first canvas arrived: hang up
        stream.close()
        assert finished.wait(WAIT_S)
    finally:
        logging.getLogger("canvas_chat.engine.api").removeHandler(handler)
    assert "cancelled" in outcomes[0], outcomes
    tokens = int(outcomes[0].split(" after ")[1].split()[0])
    assert tokens < len(LONG_REPLY) // 2  # stopped early, not after the whole reply
    harness.wait_for_log(lambda e: e.status == 499)

    monkeypatch.delenv(test_switches.STEP_DELAY)
    force("Still here.")
    answer = harness.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == "Still here."


def test_request_log_records_status_and_tokens_per_second(harness, force):
    force("Logged.")
    harness.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Log me"}])
    entry = harness.wait_for_log(lambda e: e.path == "/v1/chat/completions" and e.status == 200 and e.completion_tokens)
    assert entry.method == "POST" and entry.request_id == "api"
    assert entry.tokens_per_s > 0


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_k": 40}, "top_k"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"tool_choice": "required", "tools": [WEATHER_TOOL]}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_unsupported_fields_get_a_400_that_names_them(harness, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        harness.client().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], extra_body=extra
        )
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param
    assert param in caught.value.body["message"]


def test_bad_messages_and_settings_get_a_400_with_the_reason(harness):
    client = harness.client()
    with pytest.raises(openai.BadRequestError, match="last message"):
        client.chat.completions.create(model="tiny", messages=[{"role": "assistant", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="t_max must be greater than t_min"):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], extra_body={"t_min": 0.9, "t_max": 0.5}
        )


def test_ignored_sampling_fields_are_accepted(harness, force):
    force("Fine.")
    answer = harness.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], temperature=0.2, top_p=0.9, user="me"
    )
    assert answer.choices[0].message.content == "Fine."


@pytest.fixture
def guarded_server(harness):
    server = ApiServer(
        submit=harness.requests.put,
        cancel=harness.engine.cancels.cancel,
        model_id=lambda: "tiny",
        port=0,
        token="s3cret",
        max_body_bytes=2000,
    )
    yield server
    server.stop()


def test_a_token_is_required_when_set(guarded_server, force):
    url = guarded_server.base_url
    with pytest.raises(openai.AuthenticationError) as caught:
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    assert caught.value.status_code == 401
    assert "token" in caught.value.body["message"]
    force("Authorized.")
    client = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0, timeout=WAIT_S)
    assert [m.id for m in client.models.list()] == ["tiny"]
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == "Authorized."


def test_an_oversized_body_gets_413(guarded_server):
    client = openai.OpenAI(base_url=guarded_server.base_url, api_key="s3cret", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x" * 5000}])
    assert caught.value.status_code == 413
    assert "2,000 bytes" in caught.value.body["message"]


def _preflight_allowed_origin(url: str, origin: str) -> str | None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, method="OPTIONS", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as answer:
            return answer.headers.get("access-control-allow-origin")
    except urllib.error.HTTPError as refused:
        return refused.headers.get("access-control-allow-origin")


def test_no_cors_unless_configured(harness):
    url = harness.server.base_url + "/chat/completions"
    assert _preflight_allowed_origin(url, "http://page.example") is None
    server = ApiServer(
        submit=harness.requests.put,
        cancel=lambda _: None,
        model_id=lambda: "tiny",
        port=0,
        cors_origins=("http://page.example",),
    )
    try:
        url = server.base_url + "/chat/completions"
        assert _preflight_allowed_origin(url, "http://page.example") == "http://page.example"
        assert _preflight_allowed_origin(url, "http://other.example") is None
    finally:
        server.stop()


def test_non_loopback_bind_is_refused_without_a_token(harness):
    with pytest.raises(BindRefused, match="token"):
        ApiServer(submit=harness.requests.put, cancel=lambda _: None, model_id=lambda: None, host="0.0.0.0", port=0)


def test_start_api_server_message_refuses_a_non_loopback_bind_and_a_busy_port(harness):
    from engine.worker import Engine

    events: list = []
    engine = Engine(events.append, harness.engine.cancels)
    engine.submit = harness.requests.put
    engine.handle(p.StartApiServer("open", "0.0.0.0", 0))
    engine.handle(p.StartApiServer("busy", "127.0.0.1", harness.server.port))
    assert [(e.request_id, e.code) for e in events] == [("open", "api_token_required"), ("busy", "api_port_in_use")]
    assert all(e.recoverable for e in events)
    assert engine.api_server is None


def test_headless_command_refuses_a_non_loopback_bind_without_a_token():
    done = subprocess.run(
        [sys.executable, "-m", "engine", "api", "--model", "unused", "--host", "0.0.0.0", "--port", "0"],
        cwd=REPO_ROOT,
        env=python_env(CANVAS_CHAT_API_TOKEN=""),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 2
    assert "token" in done.stderr


@pytest.mark.slow
def test_headless_command_serves_the_openai_client_and_stops_on_ctrl_c(tiny_model_dir):
    env = python_env(**{test_switches.FORCE_REPLY: "The capital of Peru is Lima.", "OMP_NUM_THREADS": "1"})
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "api", "--model", str(tiny_model_dir), "--port", "0", "--device", "cpu"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = process.stdout.readline()
        assert ready.startswith("Canvas Chat API ready: http://127.0.0.1:"), (ready, process.stderr.read())
        base_url = ready.split("ready: ")[1].strip()
        client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=WAIT_S)
        question = [{"role": "user", "content": "What is the capital of Peru?"}]
        answer = client.chat.completions.create(model="tiny", messages=question)
        assert answer.choices[0].message.content == "The capital of Peru is Lima."
        streamed = "".join(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(model="tiny", messages=question, stream=True) if c.choices
        )
        assert streamed == "The capital of Peru is Lima."
        process.send_signal(signal.SIGINT)
        assert process.wait(WAIT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_a_second_ctrl_c_during_shutdown_does_not_abort_it(tiny_model_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "api", "--model", str(tiny_model_dir), "--port", "0", "--device", "cpu"],
        cwd=REPO_ROOT,
        env=python_env(OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = process.stdout.readline()
        assert ready.startswith("Canvas Chat API ready: "), ready
        process.send_signal(signal.SIGINT)
        seen = []
        for line in process.stderr:  # the impatient user presses Ctrl+C again while it stops
            seen.append(line)
            if line.strip() == "stopping":
                process.send_signal(signal.SIGINT)
                break
        assert process.wait(WAIT_S) == 0
        rest = process.stderr.read()
        assert "Traceback" not in "".join(seen) + rest, rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_a_window_stop_cancels_only_its_own_request(harness, force, monkeypatch):
    force(LONG_REPLY)
    monkeypatch.setenv(test_switches.STEP_DELAY, "0.02")
    first_chunk = threading.Event()
    replies: list[str] = []

    def stream() -> None:
        pieces = []
        try:
            for chunk in harness.client().chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Go on"}], stream=True
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    first_chunk.set()
        finally:
            replies.append("".join(pieces))
            first_chunk.set()

    thread = threading.Thread(target=stream, name="api-stream-client")
    thread.start()
    try:
        assert first_chunk.wait(WAIT_S)
        window_request = p.Generate(
            "gen-window-stopped", [p.ChatMessage("user", "Hi")], settings=p.GenerationSettings(max_new_tokens=64)
        )
        harness.requests.put(window_request)  # queued behind the running API request
        harness.engine.cancels.cancel(window_request.request_id)  # the window's Stop
    finally:
        thread.join(WAIT_S)
    assert replies == [LONG_REPLY]  # the API stream ran to its end
    with harness.logged:
        done = harness.logged.wait_for(
            lambda: next((e for e in harness.events if isinstance(e, p.Done) and e.request_id == "gen-window-stopped"), None),
            timeout=WAIT_S,
        )
    assert done.finish_reason == "cancelled"
