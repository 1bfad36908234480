"""The shipped demo model answers held-out questions correctly through `python -m engine generate`."""

from __future__ import annotations

import itertools
import json
import subprocess

import pytest

from engine.demo.corpus import held_out_examples, training_examples
from tests.conftest import PYTHON, REPO_ROOT, python_env

DEMO_MODEL = REPO_ROOT / "resources" / "demo-model"
SEED = 0

# Held-out questions (never in training) that the shipped model answers right at SEED with the
# folder's generation settings, and also at seeds 1-7 (checked with the evaluator's answerer
# when the model was trained): a capital in a held-out phrasing, a colour mix, a six-word
# reversal, a sum, a paraphrased question about the demo itself whose reply spans three
# canvases, and a held-out greeting (the 58-minute model without greetings small talk got it wrong).
QUESTIONS = [
    "capital of Japan?",
    "If I mix blue and yellow, what colour do I get?",
    "Reverse: stone stone bus bell table cloud",
    "What is 8 + 7?",
    "Please introduce yourself.",
    "Hi, how are you?",
]


def _expected(question: str) -> str:
    answers = {e.question: e.answer for e in held_out_examples()}
    assert question in answers, f"{question!r} is not a held-out question"
    return answers[question]


@pytest.mark.slow
@pytest.mark.parametrize("question", QUESTIONS)
def test_demo_model_answers_held_out_question(question):
    expected = _expected(question)
    proc = subprocess.run(
        [PYTHON, "-m", "engine", "generate", "--model", str(DEMO_MODEL), "--prompt", question,
         "--json", "--seed", str(SEED)],
        capture_output=True, text=True, env=python_env(), cwd=REPO_ROOT, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reply["text"].strip() == expected
    assert reply["finish_reason"] == "eos"
    assert reply["token_ids"], "the reply carries its token ids"
    if len(reply["token_ids"]) > 16:  # longer than one canvas: the GUI shows canvases committing
        assert reply["canvases"] > 1


def test_held_out_questions_never_appear_in_training():
    held_out = {e.question.lower().rstrip("?.!") for e in held_out_examples()}
    seen = {e.question.lower().rstrip("?.!") for e in itertools.islice(training_examples(seed=0), 20000)}
    assert not held_out & seen


def test_greetings_are_trained_and_held_out_greetings_are_not():
    """Greetings small talk is in training with the one greeting reply; the held-out greetings
    ('Hi, how are you?' among them) never are, not even up to case, commas and punctuation."""
    from engine.demo.corpus import GREETING_SMALL_TALK, SELF_ANSWERS, SELF_QUESTIONS, _loose

    held_out = SELF_QUESTIONS["greeting"][1]
    assert "Hi, how are you?" in held_out
    loose = {_loose(q) for q in held_out}
    assert not loose & {_loose(q) for q in SELF_QUESTIONS["greeting"][0] + GREETING_SMALL_TALK}
    greetings = [e for e in itertools.islice(training_examples(seed=0), 20000)
                 if e.answer == SELF_ANSWERS["greeting"]]
    assert len(greetings) > 500
    assert not loose & {_loose(e.question) for e in greetings}
    assert {_loose(q) for q in GREETING_SMALL_TALK} <= {_loose(e.question) for e in greetings}


def test_training_forward_matches_generate_path():
    """The batched training forward (one encoder pass, all canvases under a block mask) gives
    the logits of generate()'s step-by-step path, for replies of one to three canvases."""
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion

    from engine.demo.corpus import tokenizer_texts
    from engine.demo.tokenizer import build_tokenizer
    from engine.demo.train import Recipe, check_matches_generate, demo_config, forward_check_examples

    tokenizer = build_tokenizer(tokenizer_texts(), 512)
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(demo_config(len(tokenizer), Recipe(hidden_size=64, num_layers=2)))
    diff = check_matches_generate(model, tokenizer, forward_check_examples(), len(tokenizer))
    assert diff < 1e-4


# Held-out questions asked late in a chat (earlier turns from corpus.held_out_chats, with their
# right answers) that the shipped model answers right at SEED: the demo holds a conversation.
MULTI_TURN = [(3, "capital of Japan?"), (3, "Reverse: stone stone bus bell table cloud"), (6, "Please introduce yourself.")]


@pytest.mark.slow
def test_demo_model_answers_held_out_questions_late_in_a_chat_through_the_worker():
    """Each chat goes to the real worker as one Generate with the whole history (no cache: a
    fresh conversation id), exactly what the app sends for a follow-up."""
    from engine import protocol as p
    from engine.demo.corpus import held_out_chats
    from tests.worker_process import WorkerProcess, new_id

    process = WorkerProcess()
    try:
        process.hello()
        assert isinstance(process.load(DEMO_MODEL)[-1], p.ModelLoaded)
        for turn, question in MULTI_TURN:
            (chat,) = [e for e in held_out_chats(turn) if e.question == question]
            assert len(chat.history) == turn - 1
            messages = [p.ChatMessage(m["role"], m["content"]) for m in chat.messages()]
            events = process.request(
                p.Generate(new_id(), messages, conversation_id=new_id(), settings=p.GenerationSettings(seed=SEED)),
                timeout=300,
            )
            done = events[-1]
            assert isinstance(done, p.Done), done
            assert done.text.strip() == chat.answer, (turn, question)
    finally:
        process.close()


def test_training_chats_never_contain_a_held_out_question_and_fit_the_window():
    from engine.demo.corpus import MAX_PRIOR_TURNS, training_chats

    held_out = {e.question for e in held_out_examples()}
    chats = list(itertools.islice(training_chats(seed=0), 5000))
    assert {len(c.history) for c in chats} == set(range(MAX_PRIOR_TURNS + 1))
    for chat in chats:
        assert chat.question not in held_out and not {q for q, _ in chat.history} & held_out


def test_a_replys_token_ids_in_done_carry_no_pad_even_where_the_model_draws_pads():
    """One denoising step on a question the demo never learnt: its canvases are full of pad ids
    (0) among the words; `done.token_ids` is the reply without them (docs/protocol.md)."""
    from engine import protocol as p
    from tests.worker_process import WorkerProcess, new_id, user

    with WorkerProcess() as process:
        process.hello()
        assert isinstance(process.load(DEMO_MODEL)[-1], p.ModelLoaded)
        settings = p.GenerationSettings(seed=1, max_new_tokens=64, max_denoising_steps=1)
        events = process.request(p.Generate(new_id(), [user("xyzzy plugh")], settings=settings))
        done = events[-1]
        assert isinstance(done, p.Done), done
        assert done.token_ids and 0 not in done.token_ids
        committed = [e for e in events if isinstance(e, p.CanvasCommitted)]
        assert sum(e.token_count for e in committed) == len(done.token_ids) == done.stats.new_tokens
        assert process.close() == 0
