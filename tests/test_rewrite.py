"""Rewriting a span of a reply in place: the span changes, every other token stays bit for bit."""

from __future__ import annotations

import json
import subprocess

import pytest

from engine import protocol as p
from engine.errors import EngineError
from tests.conftest import PYTHON, REPO_ROOT, python_env
from tests.worker_process import WorkerProcess, new_id, user

# About 30 tokens: two canvases of the tiny model's 16.
REPLY = "Paris is the capital of France, and Rome is the capital of Italy."
MESSAGES = [{"role": "user", "content": "What are the capitals?"}]
DEMO_MODEL = REPO_ROOT / "resources" / "demo-model"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from engine.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def reply_ids(tiny):
    from tests.tiny_model import END_OF_TURN_ID

    ids = tiny.tokenizer.encode(REPLY, add_special_tokens=False) + [END_OF_TURN_ID]
    assert len(ids) > 2 * 16 - 8, "the reply must reach well into the second canvas"
    return ids


def rewrite(tiny, reply_ids, start, end, seed=3, on_draft_probe=None, **options):
    from engine.rewrite import rewrite_span

    drafts = on_draft_probe if on_draft_probe is not None else []
    result = rewrite_span(
        tiny.model, tiny.tokenizer, MESSAGES, reply_ids, start, end, p.GenerationSettings(seed=seed),
        on_draft=drafts.append, **options,
    )
    return result, drafts


def test_kept_tokens_are_bit_identical_and_only_the_span_changes(tiny, reply_ids):
    result, _ = rewrite(tiny, reply_ids, 3, 9)
    new = result.token_ids
    assert result.finish_reason == "rewritten"
    assert len(new) == len(reply_ids)
    assert new[:3] == reply_ids[:3] and new[9:] == reply_ids[9:]
    assert new[3:9] != reply_ids[3:9], "the span was not re-denoised"
    special = set(tiny.tokenizer.all_special_ids)
    assert not special & set(new[3:9]), "the reply must not end (or show a special token) inside the span"


def test_drafts_cover_only_the_span_and_settle_into_the_result(tiny, reply_ids):
    result, drafts = rewrite(tiny, reply_ids, 3, 9)
    assert len(drafts) >= 2
    for draft in drafts:
        assert (draft.canvas_index, draft.start, draft.end) == (0, 3, 9)
        assert len(draft.token_ids) == len(draft.settled) == len(draft.entropy_buckets) == 6
    assert [d.step_index for d in drafts] == list(range(len(drafts)))
    assert drafts[-1].token_ids == result.token_ids[3:9]
    assert not all(drafts[0].settled), "the first step should still show noise in the span"


def test_a_span_across_a_canvas_boundary_is_rewritten_canvas_by_canvas(tiny, reply_ids, monkeypatch):
    contexts = []
    original_generate = tiny.model.generate

    def recording_generate(input_ids, **kwargs):
        contexts.append(input_ids[0].tolist())
        return original_generate(input_ids, **kwargs)

    monkeypatch.setattr(tiny.model, "generate", recording_generate)
    result, drafts = rewrite(tiny, reply_ids, 12, 20)
    new = result.token_ids
    assert new[:12] == reply_ids[:12] and new[20:] == reply_ids[20:]
    assert new[12:16] != reply_ids[12:16] and new[16:20] != reply_ids[16:20]
    assert result.stats.canvases == 2
    # Left to right, each part in its own canvas...
    assert sorted({(d.canvas_index, d.start, d.end) for d in drafts}) == [(0, 12, 16), (1, 16, 20)]
    assert [d.canvas_index for d in drafts] == sorted(d.canvas_index for d in drafts)
    # ...and the second canvas reads the rewritten first one as its context.
    assert len(contexts) == 2
    assert contexts[1][-16:] == new[:16]


def test_positions_after_the_reply_end_are_free_and_dropped(tiny, reply_ids):
    short = reply_ids[:5] + reply_ids[-1:]  # five tokens and the end of turn: one partial canvas
    result, _ = rewrite(tiny, short, 1, 4)
    assert len(result.token_ids) == len(short)
    assert result.token_ids[0] == short[0] and result.token_ids[4:] == short[4:]


@pytest.mark.parametrize(
    ("start", "end", "words"),
    [
        (4, 4, "empty"),
        (5, 3, "outside the reply"),
        (-1, 3, "outside the reply"),
        (0, 999, "outside the reply"),
        (10, None, "outside the reply"),  # None: up to and including the end of turn
    ],
)
def test_bad_spans_get_plain_errors(tiny, reply_ids, start, end, words):
    end = len(reply_ids) if end is None else end
    with pytest.raises(EngineError, match=words) as caught:
        rewrite(tiny, reply_ids, start, end)
    assert caught.value.code == "bad_span"


def test_the_instruction_reaches_the_model_as_a_system_note(tiny, reply_ids):
    from engine.rewrite import rewrite_messages

    assert rewrite_messages(MESSAGES, "  ") == MESSAGES
    with_system = rewrite_messages([{"role": "system", "content": "Be brief."}, *MESSAGES], "Say it in French.")
    assert with_system[0]["role"] == "system" and with_system[0]["content"].startswith("Be brief.")
    assert "Say it in French." in with_system[0]["content"] and with_system[1:] == MESSAGES
    plain, _ = rewrite(tiny, reply_ids, 3, 9, seed=5)
    steered, _ = rewrite(tiny, reply_ids, 3, 9, seed=5, instruction="Say it in French.")
    assert steered.token_ids[:3] == reply_ids[:3] and steered.token_ids[9:] == reply_ids[9:]
    assert steered.token_ids[3:9] != plain.token_ids[3:9], "the same seed gave the same span: the note was not seen"


def test_cancel_returns_the_reply_unchanged_even_after_a_finished_canvas(tiny, reply_ids):
    seen = []
    result, drafts = rewrite(tiny, reply_ids, 12, 20, should_stop=lambda: bool(seen) and seen[-1].canvas_index == 1,
                             on_draft_probe=seen)
    assert result.finish_reason == "cancelled"
    assert {d.canvas_index for d in drafts} == {0, 1}  # the first canvas was done when the cancel came
    assert result.token_ids == reply_ids


def test_held_positions_are_pinned_and_the_span_cannot_take_special_tokens():
    import torch
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        EntropyBoundSampler,
        EntropyBoundSamplerConfig,
        LinearTemperatureScheduleLogitsProcessor,
    )

    from engine.rewrite import HeldPositionsProcessor

    torch.manual_seed(0)
    canvas = torch.tensor([[40, 41, 42, 0, 0, 45]])
    held = torch.tensor([True, False, True, False, False, False])
    span = torch.tensor([False, True, False, True, True, False])
    scores = torch.randn(1, 6, 50)
    scores[..., 1] = 100.0  # every position wants the end of turn
    processed = HeldPositionsProcessor(canvas, held, span, banned_ids=[0, 1])(None, scores, cur_step=3)
    processed = LinearTemperatureScheduleLogitsProcessor(0.4, 0.8, 8)(None, processed, cur_step=3)
    argmax = processed.argmax(-1)[0]
    assert argmax[held].tolist() == [40, 42]
    assert not set(argmax[span].tolist()) & {0, 1}
    assert argmax[~held & ~span].tolist() == [1]  # free positions after the reply are left alone
    # Pinned means certain: the stock sampler accepts every held position with its token.
    sampler = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=0.01), 6, 50, 8)
    sampled = torch.multinomial(torch.softmax(processed[0], -1), 1).T
    accepted = sampler.accept_canvas(torch.full((1, 6), 7), sampled, processed, 3)
    assert sampler.accepted_token_mask[0, held].all() and accepted[0, held].tolist() == [40, 42]


def test_the_loop_stops_on_the_spans_confidence_not_the_held_tokens():
    import torch

    from engine.rewrite import FreePositionsStopping

    free = torch.tensor([False] * 14 + [True, True])
    logits = torch.full((1, 16, 50), -30.0)
    logits[0, :, 3] = 30.0  # every position is certain...
    logits[0, 14:] = 0.0  # ...but the two free ones are uniform noise
    argmax = logits.argmax(-1)
    stock_mean = torch.distributions.Categorical(logits=logits).entropy().mean()
    assert stock_mean < 0.5, "the canvas-wide mean hides the uncertain span"
    stopping = FreePositionsStopping(1, 0.5, free)
    assert not stopping(argmax, logits).item() and not stopping(argmax, logits).item()
    logits[0, 14:, 3] = 60.0
    stopping(argmax, logits)
    assert stopping(argmax, logits).item()


def test_character_spans_widen_to_whole_tokens_and_ranges_map_back(tiny):
    from engine.rewrite import character_ranges, token_span_of_characters

    tokenizer = tiny.tokenizer
    ids = tokenizer.encode(REPLY, add_special_tokens=False)
    inside = REPLY.index("apita")  # part of "capital"
    start, end = token_span_of_characters(tokenizer, ids, REPLY, inside, inside + 5)
    widened = tokenizer.decode(ids[start:end])
    assert "apita" in widened and len(widened) < len(" capital") + 3
    text, rewritten, kept = character_ranges(tokenizer, ids, start, end)
    assert text == REPLY and text[rewritten[0] : rewritten[1]] == widened
    assert kept == [[0, rewritten[0]], [rewritten[1], len(REPLY)]]
    assert token_span_of_characters(tokenizer, ids, REPLY, 0, len(REPLY)) == (0, len(ids))
    for char_start, char_end, words in [(3, 3, "empty"), (0, len(REPLY) + 1, "outside the text"), (-2, 4, "outside")]:
        with pytest.raises(EngineError, match=words):
            token_span_of_characters(tokenizer, ids, REPLY, char_start, char_end)


# ---------------------------------------------------------------------------- the real worker


def test_rewrite_through_the_worker_streams_span_drafts_and_cancel_stops_it(tiny_model_dir, tiny, reply_ids):
    process = WorkerProcess(CANVAS_CHAT_TEST_STEP_DELAY="0.3")
    process.hello()
    process.load(tiny_model_dir)
    request = p.RewriteSpan(new_id(), [user("What are the capitals?")], reply_ids, 3, 9,
                            settings=p.GenerationSettings(seed=3))
    process.send(request)
    first = process.next_event()
    assert isinstance(first, p.SpanDraft) and (first.span_start, first.span_end) == (3, 9)
    assert len(first.pieces) == len(first.settled) == len(first.entropy) == 6
    process.send(p.Cancel(new_id(), request.request_id))
    events = process.events_until(request.request_id, (p.SpanRewritten, p.Error))
    done = events[-1]
    assert isinstance(done, p.SpanRewritten) and done.finish_reason == "cancelled"
    assert done.token_ids == reply_ids and done.text == REPLY
    assert len([e for e in events if isinstance(e, p.SpanDraft)]) <= 1  # at most one more step ran

    # The worker stays usable: the same request runs to the end, holding every other token.
    again = p.RewriteSpan(new_id(), [user("What are the capitals?")], reply_ids, 3, 9,
                          settings=p.GenerationSettings(seed=3))
    events = process.request(again, (p.SpanRewritten, p.Error))
    done = events[-1]
    assert isinstance(done, p.SpanRewritten) and done.finish_reason == "rewritten", done
    in_process, _ = rewrite(tiny, reply_ids, 3, 9)
    assert done.token_ids == in_process.token_ids  # the worker runs exactly engine.rewrite
    assert done.token_ids[:3] == reply_ids[:3] and done.token_ids[9:] == reply_ids[9:]
    assert done.token_ids[3:9] != reply_ids[3:9]
    start, end = done.rewritten
    assert done.text[:start] + done.text[end:] == tiny.tokenizer.decode(reply_ids[:3] + reply_ids[9:-1])
    assert [text_range for text_range in done.kept] == [[0, start], [end, len(done.text)]]
    drafts = [e for e in events if isinstance(e, p.SpanDraft)]
    assert drafts and all((d.span_start, d.span_end, len(d.pieces)) == (3, 9, 6) for d in drafts)
    assert "".join(drafts[-1].pieces) == done.text[start:end]

    bad = process.request(p.RewriteSpan(new_id(), [user("Hi")], reply_ids, 4, 4), (p.SpanRewritten, p.Error))[-1]
    assert isinstance(bad, p.Error) and bad.code == "bad_span" and bad.recoverable and "empty" in bad.message
    chat = process.request(p.Generate(new_id(), [user("And now?")], settings=p.GenerationSettings(seed=2)))[-1]
    assert isinstance(chat, p.Done) and chat.finish_reason in ("eos", "length")
    assert process.close() == 0


# ---------------------------------------------------------------------------- the command line


def run_rewrite_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "engine", "rewrite", *args], capture_output=True, text=True, env=python_env(), timeout=300
    )


def test_cli_on_the_demo_model_keeps_every_token_outside_the_span():
    text = "The capital of France is Rome."
    result = run_rewrite_cli(
        "--model", str(DEMO_MODEL), "--prompt", "What is the capital of France?", "--text", text,
        "--span", "25:29", "--seed", "0", "--json",
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    output = json.loads(line)
    start, end = output["span_tokens"]
    old, new = output["original_token_ids"], output["token_ids"]
    assert old[:start] == new[:start] and old[end:] == new[end:] and len(old) == len(new)
    assert (start, end) == (5, 7)  # " Rome" is two tokens: "Rome" widened to whole tokens
    assert new[start:end] != old[start:end]
    char_start, char_end = output["rewritten"]
    assert output["kept"] == [[0, char_start], [char_end, len(output["text"])]]
    assert output["text"][:char_start] == text[:char_start] == "The capital of France is"
    assert output["text"][char_end:] == "."
    assert output["finish_reason"] == "rewritten"


@pytest.mark.parametrize(
    ("span", "words"),
    [("7:7", "The span is empty"), ("3:99", "outside the text, which has 5 characters"), ("abc", "START:END")],
)
def test_cli_bad_span_is_a_plain_error(span, words):
    result = run_rewrite_cli("--model", str(DEMO_MODEL), "--text", "Hello", "--span", span)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and words in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_missing_model_is_a_plain_error(tmp_path):
    result = run_rewrite_cli("--model", str(tmp_path / "nowhere"), "--text", "Hello", "--span", "0:2")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_span_drafts_coalesce_latest_wins_and_the_result_is_never_dropped():
    import threading

    from engine.worker import EventChannel

    class StalledStream:
        """Blocks the writer on its first line, so later events queue up behind it."""

        def __init__(self):
            self.lines, self.entered, self.release = [], threading.Event(), threading.Event()

        def write(self, text):
            self.entered.set()
            self.release.wait(30)
            self.lines.append(text)

        def flush(self):
            pass

    stream = StalledStream()
    channel = EventChannel(stream)
    stats = p.GenerationStats(0.0, 0.0, 0, 0.0, 0, 0.0, 0.0, 0, 0, 0)
    channel.send(p.Ready("h", p.PROTOCOL_VERSION, "0", 1))
    assert stream.entered.wait(30)
    for step in range(3):
        channel.send(p.SpanDraft("r", 0, step, 8, 3, 5, "x", ["x", ""], [True, False], [0, 3]))
    channel.send(p.SpanDraft("r", 1, 0, 8, 16, 18, "y", ["y", ""], [True, False], [0, 3]))  # next canvas: kept
    channel.send(p.SpanRewritten("r", "rewritten", "xy", [1, 2], 3, 5, [0, 1], [[1, 2]], stats))
    stream.release.set()
    channel.close()
    events = [p.decode(line) for line in stream.lines]
    drafts = [(e.canvas_index, e.step_index) for e in events if isinstance(e, p.SpanDraft)]
    assert drafts == [(0, 2), (1, 0)]
    assert isinstance(events[-1], p.SpanRewritten)


def test_the_worker_widens_a_character_span_and_says_where_the_whole_span_lies(tiny_model_dir, tiny, reply_ids):
    """What the GUI sends: the selection in characters of the reply's text (it has no tokenizer)."""
    from engine.rewrite import token_span_of_characters

    process = WorkerProcess()
    process.hello()
    process.load(tiny_model_dir)
    selected = "capital of France"
    char_start = REPLY.index(selected)
    start, end = token_span_of_characters(tiny.tokenizer, reply_ids, REPLY, char_start, char_start + len(selected))
    by_characters = p.RewriteSpan(new_id(), [user("What are the capitals?")], reply_ids, char_start,
                                  char_start + len(selected), settings=p.GenerationSettings(seed=3),
                                  span_unit="characters")
    events = process.request(by_characters, (p.SpanRewritten, p.Error))
    done = events[-1]
    assert isinstance(done, p.SpanRewritten) and (done.span_start, done.span_end) == (start, end), done
    drafts = [e for e in events if isinstance(e, p.SpanDraft)]
    whole_chars = [len(tiny.tokenizer.decode(reply_ids[:start])), len(tiny.tokenizer.decode(reply_ids[:end]))]
    assert drafts and all(d.span_tokens == [start, end] and d.span_chars == whole_chars for d in drafts)
    assert whole_chars[0] <= char_start and char_start + len(selected) <= whole_chars[1]
    by_tokens = process.request(p.RewriteSpan(new_id(), [user("What are the capitals?")], reply_ids, start, end,
                                              settings=p.GenerationSettings(seed=3)), (p.SpanRewritten, p.Error))[-1]
    assert done.token_ids == by_tokens.token_ids
    assert done.token_ids[:start] == reply_ids[:start] and done.token_ids[end:] == reply_ids[end:]
    bad = process.request(p.RewriteSpan(new_id(), [user("Hi")], reply_ids, 0, 999, span_unit="characters"),
                          (p.SpanRewritten, p.Error))[-1]
    assert isinstance(bad, p.Error) and bad.code == "bad_span" and "outside the text" in bad.message
    assert process.close() == 0
