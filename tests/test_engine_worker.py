"""The real worker process on a tiny model: handshake, load, drafts, cancel, cache, errors."""

from __future__ import annotations

import json
import shutil

import pytest

from engine import protocol as p
from tests.worker_process import WorkerProcess, new_id, user

# Forced through the real denoising loop; about 30 tokens, so two canvases of 16.
TWO_CANVAS_REPLY = "Paris is the capital of France, and Rome is the capital of Italy."


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    """One worker with the tiny model loaded, shared by the tests that leave it usable."""
    with WorkerProcess(CANVAS_CHAT_TEST_FORCE_REPLY=TWO_CANVAS_REPLY) as process:
        process.hello()
        loaded = process.load(tiny_model_dir)
        assert isinstance(loaded[-1], p.ModelLoaded), loaded[-1]
        yield process
        assert process.close() == 0


def _auto_device() -> str:
    """What device "auto" means on this machine (the suite hides GPUs unless CANVAS_CHAT_TEST_GPU=1)."""
    from engine.loading import pick_device

    return pick_device("auto")


def generate(worker, messages, conversation_id="", **settings):
    request = p.Generate(new_id(), messages, conversation_id, settings=p.GenerationSettings(**settings))
    return request, worker.request(request)


def test_handshake_reports_protocol_version_and_pid():
    with WorkerProcess() as process:
        ready = process.hello()
        assert ready.protocol_version == p.PROTOCOL_VERSION
        assert ready.pid == process.process.pid
        assert process.close() == 0


def test_protocol_version_mismatch_is_a_fatal_error_with_a_clear_message():
    with WorkerProcess() as process:
        process.send(p.Hello("h1", p.PROTOCOL_VERSION + 1))
        error = process.next_event()
        assert isinstance(error, p.Error)
        assert error.code == "protocol_mismatch" and not error.recoverable
        assert f"version {p.PROTOCOL_VERSION + 1}" in error.message
        assert process.process.wait(30) == 3
        process.close()


def test_load_reports_progress_then_model_loaded(tiny_model_dir):
    with WorkerProcess() as process:
        process.hello()
        events = process.load(tiny_model_dir)
        progress = [e for e in events if isinstance(e, p.LoadProgress)]
        assert progress, "no load progress before the model was loaded"
        fractions = [e.fraction for e in progress]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        loaded = events[-1]
        assert isinstance(loaded, p.ModelLoaded)
        assert loaded.device == _auto_device() and loaded.canvas_length == 16 and loaded.parameters > 0
        assert process.close() == 0


def test_two_canvas_reply_streams_drafts_then_commits_then_done(worker):
    request, events = generate(worker, [user("What are the capitals?")], seed=7, max_new_tokens=64)
    kinds = [type(e).__name__ for e in events]
    done = events[-1]
    assert isinstance(done, p.Done), kinds
    assert done.finish_reason == "eos"
    assert done.text == TWO_CANVAS_REPLY
    commits = [e for e in events if isinstance(e, p.CanvasCommitted)]
    assert [c.canvas_index for c in commits] == [0, 1]
    assert commits[-1].reply_text == TWO_CANVAS_REPLY
    assert sum(c.token_count for c in commits) + 1 == len(done.token_ids)  # + the EOS
    # Each canvas is preceded by its drafts, numbered step by step.
    for commit in commits:
        drafts = [e for e in events if isinstance(e, p.Draft) and e.canvas_index == commit.canvas_index]
        assert drafts and events.index(drafts[-1]) < events.index(commit)
        assert [d.step_index for d in drafts] == sorted(d.step_index for d in drafts)
        for draft in drafts:
            assert len(draft.pieces) == len(draft.settled) == len(draft.entropy)
            assert all(0 <= bucket < p.ENTROPY_BUCKETS for bucket in draft.entropy)
        # The first draft is mostly noise; the last has every position settled.
        assert not all(drafts[0].settled)
        assert all(drafts[-1].settled) and "".join(drafts[-1].pieces) == commit.text
        # Drafts may be coalesced on the way (latest wins), never the last step of a canvas.
        assert drafts[-1].step_index == commit.steps - 1
    stats = done.stats
    assert stats.canvases == 2 and stats.new_tokens == len(done.token_ids)
    # Against what the stream showed, not the stats' own formula: every step is one decoder forward.
    steps_seen = sum(c.steps for c in commits)
    assert stats.decoder_forwards == steps_seen
    assert stats.tokens_per_forward == pytest.approx(len(done.token_ids) / steps_seen, rel=1e-3)
    assert stats.steps_per_canvas == pytest.approx(steps_seen / len(commits), rel=1e-3)
    assert 0 < stats.time_to_first_draft_s <= stats.wall_s


def test_cancel_mid_canvas_stops_within_one_step_and_the_worker_stays_usable(tiny_model_dir):
    with WorkerProcess(CANVAS_CHAT_TEST_STEP_DELAY="0.3") as process:
        process.hello()
        process.load(tiny_model_dir)
        story = [user("Tell me a long story")]
        request = p.Generate(new_id(), story, "chat-1", settings=p.GenerationSettings(seed=1, max_new_tokens=64))
        process.send(request)
        first = process.next_event()
        assert isinstance(first, p.Draft) and first.canvas_index == 0
        process.send(p.Cancel(new_id(), request.request_id))
        events = process.events_until(request.request_id)
        done = events[-1]
        assert isinstance(done, p.Done) and done.finish_reason == "cancelled"
        # The cancel arrives during the step after the first draft: at most one more step runs.
        assert len([e for e in events if isinstance(e, p.Draft)]) <= 1
        assert not [e for e in events if isinstance(e, p.CanvasCommitted)]
        # Retrying the stopped turn starts from the conversation's cache, which the cancel left intact.
        _, after = generate(process, story, "chat-1", seed=2, max_new_tokens=16)
        assert isinstance(after[-1], p.Done) and after[-1].finish_reason in ("eos", "length")
        assert 0 < after[-1].stats.cached_tokens < after[-1].stats.prompt_tokens
        assert process.close() == 0


@pytest.mark.parametrize(
    ("breakage", "code", "words"),
    [
        ("missing_folder", "model_not_found", "No model folder"),
        ("no_config", "model_broken", "no config.json"),
        ("bad_config", "model_broken", "cannot be read"),
        ("missing_shard", "model_broken", "no weights"),
        ("corrupt_weights", "model_broken", "not a safetensors file"),
        ("no_tokenizer", "tokenizer_missing", "no tokenizer"),
        ("wrong_type", "wrong_model_type", "DiffusionGemma"),
        ("hub_id_not_downloaded", "model_not_downloaded", "not been downloaded"),
    ],
)
def test_broken_model_gives_a_clear_error_and_the_worker_keeps_serving(worker, tiny_model_dir, tmp_path, breakage, code, words):
    folder = tmp_path / "model"
    if breakage != "missing_folder":
        shutil.copytree(tiny_model_dir, folder)
    model = str(folder)
    if breakage == "no_config":
        (folder / "config.json").unlink()
    elif breakage == "bad_config":
        (folder / "config.json").write_text("{ not json")
    elif breakage == "missing_shard":
        (folder / "model.safetensors").unlink()
    elif breakage == "corrupt_weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif breakage == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
    elif breakage == "wrong_type":
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = "llama"
        (folder / "config.json").write_text(json.dumps(config))
    elif breakage == "hub_id_not_downloaded":
        model = "google/not-downloaded-model"
    events = worker.load(model)
    error = events[-1]
    assert isinstance(error, p.Error), error
    assert error.code == code and error.recoverable
    assert words in error.message
    # Still serving: the previous model is gone, so reload it and generate.
    assert isinstance(worker.load(tiny_model_dir)[-1], p.ModelLoaded)


def test_model_loads_by_hub_id_from_the_local_hugging_face_cache(tiny_model_dir, tmp_path):
    cache = tmp_path / "hub"
    snapshot = cache / "models--google--tiny-diffusiongemma" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (cache / "models--google--tiny-diffusiongemma" / "refs").mkdir()
    (cache / "models--google--tiny-diffusiongemma" / "refs" / "main").write_text("a" * 40)
    with WorkerProcess(HF_HUB_CACHE=str(cache)) as process:
        process.hello()
        loaded = process.load("google/tiny-diffusiongemma")[-1]
        assert isinstance(loaded, p.ModelLoaded), loaded
        assert loaded.model == "google/tiny-diffusiongemma" and loaded.model_path == str(snapshot)
        assert process.close() == 0


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"max_new_tokens": 0}, "max new tokens must be a whole number from 1 to 131,072 (got 0)"),
        ({"max_denoising_steps": -1}, "denoising steps must be a whole number from 1 to 1,024 (got -1)"),
        ({"entropy_bound": 0.0}, "entropy bound must be a number from 0.001 to 100 (got 0)"),
        ({"t_min": 0.9, "t_max": 0.5}, "t_max must be greater than t_min"),
        ({"t_min": 0.9}, "t_max must be greater than t_min"),  # against the model's t_max 0.8
        # Not numbers, or numbers no run could use: each would otherwise run (or hang) the loop.
        ({"entropy_bound": float("nan")}, "entropy bound must be a number from 0.001 to 100 (got nan)"),
        ({"t_max": float("inf")}, "t_max must be a number from 0 to 5 (got inf)"),
        ({"t_min": float("nan")}, "t_min must be a number from 0 to 5 (got nan)"),
        ({"seed": 2**64}, "seed must be a whole number from 0 to 18,446,744,073,709,551,615"),
        ({"seed": -1}, "seed must be a whole number from 0"),
        ({"max_new_tokens": 2**40}, "max new tokens must be a whole number from 1 to 131,072 (got 1,099,511,627,776)"),
        ({"max_denoising_steps": 10**12}, "denoising steps must be a whole number from 1 to 1,024"),
    ],
)
def test_bad_settings_give_a_clear_error_and_the_worker_keeps_serving(worker, settings, words):
    _, events = generate(worker, [user("Hi")], **settings)
    error = events[-1]
    assert isinstance(error, p.Error) and error.code == "bad_settings" and error.recoverable
    assert words in error.message
    _, events = generate(worker, [user("Hi")], seed=1, max_new_tokens=16)
    assert isinstance(events[-1], p.Done)


def test_a_settings_number_too_large_for_json_is_refused_as_bad_settings(worker):
    worker.send_line(
        '{"type":"generate","request_id":"big1","messages":[{"role":"user","content":"Hi"}],'
        '"settings":{"entropy_bound":1e999}}'
    )
    error = worker.events_until("big1")[-1]
    assert isinstance(error, p.Error) and error.code == "bad_settings" and error.recoverable
    assert "entropy bound must be a number from 0.001 to 100 (got inf)" in error.message
    worker.hello()


@pytest.mark.parametrize(
    "line",
    [
        "this is not json",
        "[1, 2, 3]",
        '{"type": "launch_rockets", "request_id": "x1"}',
        '{"type": "generate", "request_id": "x2"}',
        '{"type": "generate", "request_id": "x3", "messages": [{"role": "robot", "content": "hi"}]}',
        '{"type": "generate", "request_id": "x4", "messages": [], "settings": {"seed": "seven"}}',
    ],
)
@pytest.mark.log_expected("dropped a malformed request")
def test_malformed_line_gets_an_error_event_and_the_worker_keeps_serving(worker, line):
    worker.send_line(line)
    error = worker.next_event()
    assert isinstance(error, p.Error) and error.code == "malformed_message" and error.recoverable
    assert error.message.startswith("The engine could not read a request")
    if '"request_id": "x' in line:
        assert error.request_id == json.loads(line)["request_id"]
    worker.hello()


def test_a_huge_paste_beyond_the_models_context_is_refused_with_a_clear_message(worker):
    huge = "lorem ipsum dolor sit amet " * 4000  # far past the tiny model's 4,096 positions
    _, events = generate(worker, [user(huge)], seed=1, max_new_tokens=16)
    error = events[-1]
    assert isinstance(error, p.Error) and error.code == "context_too_long" and error.recoverable
    assert "reads at most 4,096" in error.message
    assert not [e for e in events if isinstance(e, p.Draft)]
    _, events = generate(worker, [user("Hi")], seed=1, max_new_tokens=16)
    assert isinstance(events[-1], p.Done)


def test_generate_without_a_model_says_so():
    with WorkerProcess() as process:
        process.hello()
        request = p.Generate(new_id(), [user("Hi")])
        error = process.request(request)[-1]
        assert isinstance(error, p.Error) and error.code == "no_model_loaded" and error.recoverable
        assert process.close() == 0


@pytest.mark.log_expected(r"request \w+ failed")
def test_out_of_memory_is_a_recoverable_error(tiny_model_dir):
    with WorkerProcess(CANVAS_CHAT_TEST_FAULT="oom_on_generate") as process:
        process.hello()
        process.load(tiny_model_dir)
        error = process.request(p.Generate(new_id(), [user("Hi")]))[-1]
        assert isinstance(error, p.Error) and error.code == "out_of_memory" and error.recoverable
        assert "ran out of memory" in error.message
        process.hello()  # still serving
        assert process.close() == 0


def test_closing_stdin_ends_the_worker_even_mid_generation(tiny_model_dir):
    with WorkerProcess(CANVAS_CHAT_TEST_STEP_DELAY="0.2") as process:
        process.hello()
        process.load(tiny_model_dir)
        process.send(p.Generate(new_id(), [user("Hi")], settings=p.GenerationSettings(max_new_tokens=256)))
        assert isinstance(process.next_event(), p.Draft)
        assert process.close(timeout=30) == 0


@pytest.mark.log_expected("stdin closed 5 s ago and the engine is still busy")
def test_closing_stdin_during_a_step_that_does_not_end_still_ends_the_worker(tiny_model_dir):
    # Each step takes ten minutes (as a hung GPU step would): the cancel between steps never comes.
    with WorkerProcess(CANVAS_CHAT_TEST_STEP_DELAY="600") as process:
        process.hello()
        process.load(tiny_model_dir)
        process.send(p.Generate(new_id(), [user("Hi")], settings=p.GenerationSettings(max_new_tokens=64)))
        assert isinstance(process.next_event(), p.Draft)
        assert process.close(timeout=120) == 1  # by itself, well before the step would end
        assert any("stdin closed" in line and "still busy" in line for line in process.stderr_lines)


def test_stdout_carries_nothing_but_protocol_lines(worker):
    generate(worker, [user("Hi")], seed=5, max_new_tokens=32)
    for line in worker.raw_lines:
        p.decode(line, p.EVENT_TYPES)


def test_unload_frees_the_model_and_generate_then_says_none_is_loaded(tiny_model_dir):
    with WorkerProcess() as process:
        process.hello()
        assert isinstance(process.load(tiny_model_dir)[-1], p.ModelLoaded)
        (unloaded,) = process.request(p.Unload(new_id()), (p.Unloaded, p.Error))
        assert isinstance(unloaded, p.Unloaded), unloaded
        error = process.request(p.Generate(new_id(), [user("Hi")]))[-1]
        assert isinstance(error, p.Error) and error.code == "no_model_loaded"
        assert process.close() == 0


def test_probe_hardware_answers_with_the_engines_report():
    with WorkerProcess() as process:
        process.hello()
        (answer,) = process.request(p.ProbeHardware(new_id()), (p.HardwareReport, p.Error), timeout=120)
        assert isinstance(answer, p.HardwareReport), answer
        report = answer.report
        assert report["source"] == "engine"  # the worker's probe, with torch, not the GUI's
        assert isinstance(report["cuda_available"], bool) and report["verdict"]["code"]
        assert report["ram_total_bytes"] > 0
        assert process.close() == 0


def test_shutdown_exits_with_status_0_and_serves_nothing_after_it():
    with WorkerProcess() as process:
        process.hello()
        process.send(p.Shutdown(new_id()))
        process.send(p.Hello(new_id(), p.PROTOCOL_VERSION))  # queued behind the shutdown: never answered
        assert process.process.wait(30) == 0  # stdin still open: the request alone ended it
        with pytest.raises(AssertionError, match="closed its stdout"):
            process.next_event(timeout=30)
        assert process.close() == 0


def test_garbage_stdout_switch_writes_one_non_protocol_line_then_serves():
    with WorkerProcess(CANVAS_CHAT_TEST_FAULT="garbage_stdout") as process:
        first = process.next_event()
        assert first == ("unparsable", "this line is not JSON (test switch)")
        assert process.hello().protocol_version == p.PROTOCOL_VERSION
        assert process.close() == 0


def test_slow_load_switch_delays_the_load_and_the_worker_serves_in_order(tiny_model_dir):
    import time

    with WorkerProcess(CANVAS_CHAT_TEST_FAULT="slow_load:4") as process:
        process.hello()
        assert isinstance(process.load(tiny_model_dir)[-1], p.ModelLoaded)  # imports done: a reload is quick
        started = time.monotonic()
        process.send(p.LoadModel(new_id(), str(tiny_model_dir)))
        hello = p.Hello(new_id(), p.PROTOCOL_VERSION)
        process.send(hello)
        first = process.next_event()
        # A lower bound only: the switch sleeps that long before loading (no upper bound is timed).
        assert isinstance(first, p.LoadProgress) and time.monotonic() - started >= 4  # a reload alone: ~1 s
        events = [first, *process.events_until(hello.request_id, (p.Ready,))]
        kinds = [type(e) for e in events]
        assert kinds.index(p.ModelLoaded) < kinds.index(p.Ready)  # requests are served in order
        assert process.close() == 0
