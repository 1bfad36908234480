"""A follow-up answered from the conversation's KV cache is the reply to the whole conversation
as the chat template renders it: token for token the same as `reuse_cache: false`, as no
conversation id, and as stock `generate()` on `apply_chat_template` — on unforced models."""

from __future__ import annotations

import pytest

from engine import protocol as p
from tests.conftest import REPO_ROOT
from tests.worker_process import WorkerProcess, assistant, new_id, user

DEMO_MODEL = REPO_ROOT / "resources" / "demo-model"

# User turns of each chat; the replies come from the model. The demo model knows these skills;
# the random tiny model answers noise, which is as good a history as any.
CHATS = [
    ["What is the capital of France?", "What is 3 + 4?"],
    ["Please introduce yourself.", "If I mix blue and yellow, what colour do I get?", "Hi, how are you?"],
    ["Reverse: red blue green", "capital of Japan?"],
]
SEEDS = [0, 7]
MAX_NEW_TOKENS = 48


@pytest.fixture(scope="module", params=["demo", "tiny"])
def model_worker(request, tiny_model_dir):
    """An unforced worker (no test switch steers its replies) with one model loaded."""
    from transformers import AutoTokenizer

    folder = DEMO_MODEL if request.param == "demo" else tiny_model_dir
    worker = WorkerProcess()
    try:
        worker.hello()
        assert isinstance(worker.load(folder)[-1], p.ModelLoaded)
        yield folder, AutoTokenizer.from_pretrained(folder), worker
    finally:
        assert worker.close() == 0


def _generate(worker, messages, conversation_id, seed, reuse_cache=True) -> p.Done:
    settings = p.GenerationSettings(seed=seed, max_new_tokens=MAX_NEW_TOKENS)
    done = worker.request(p.Generate(new_id(), messages, conversation_id, settings=settings, reuse_cache=reuse_cache))[-1]
    assert isinstance(done, p.Done), done
    return done


def _as_dicts(messages: list[p.ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("chat", CHATS, ids=lambda chat: f"{len(chat)}-turns")
def test_cached_follow_up_equals_the_conversation_encoded_afresh(model_worker, chat, seed):
    from engine.generation import encode_prompt

    _, tokenizer, worker = model_worker
    conversation = new_id()
    messages: list[p.ChatMessage] = []
    for turn, question in enumerate(chat):
        messages.append(user(question))
        turn_seed = seed + 100 * turn
        rendered = encode_prompt(tokenizer, _as_dicts(messages))
        cached = _generate(worker, messages, conversation, turn_seed)
        assert cached.stats.prompt_tokens == len(rendered), "the model saw other tokens than the chat template's"
        if turn:
            assert 0 < cached.stats.cached_tokens < cached.stats.prompt_tokens, "the follow-up did not reuse the cache"
            # The same turn again: from scratch in this conversation, and with no conversation at all.
            fresh = _generate(worker, messages, conversation, turn_seed, reuse_cache=False)
            stateless = _generate(worker, messages, "", turn_seed)
            assert fresh.stats.cached_tokens == stateless.stats.cached_tokens == 0
            assert fresh.stats.prompt_tokens == stateless.stats.prompt_tokens == len(rendered)
            assert cached.token_ids == fresh.token_ids == stateless.token_ids, f"turn {turn + 1} diverged"
        messages.append(assistant(cached.text))


def test_the_uncached_follow_up_is_stock_generate_on_the_chat_template(model_worker):
    """The "afresh" side is what stock transformers feeds the model: apply_chat_template of the
    whole conversation, then generate() — not the worker's own token history."""
    import torch
    from transformers import AutoModelForImageTextToText

    folder, tokenizer, worker = model_worker
    first = _generate(worker, [user(CHATS[0][0])], "", 3)
    messages = [user(CHATS[0][0]), assistant(first.text), user(CHATS[0][1])]
    conversation = new_id()
    _generate(worker, messages[:1], conversation, 3)
    cached = _generate(worker, messages, conversation, 11)
    assert cached.stats.cached_tokens > 0

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    input_ids = tokenizer.apply_chat_template(
        _as_dicts(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    torch.manual_seed(11)
    sequences = model.generate(input_ids, max_new_tokens=MAX_NEW_TOKENS).sequences[0, input_ids.shape[1] :].tolist()
    stock = [t for t in sequences if t != model.generation_config.pad_token_id]
    assert cached.stats.prompt_tokens == input_ids.shape[1]
    assert cached.token_ids == stock


def test_an_edited_history_reuses_only_the_prefix_that_still_matches(model_worker):
    _, _, worker = model_worker
    conversation = new_id()
    question = [user(CHATS[0][0])]
    first = _generate(worker, question, conversation, 3)
    edited = [*question, assistant(first.text + " (edited)"), user("Really?")]
    # The edit changes tokens after the cached prefix (the first user turn): that prefix is still good.
    second = _generate(worker, edited, conversation, 4)
    assert 0 < second.stats.cached_tokens < second.stats.prompt_tokens
    # Regenerate (the same messages again) starts from the same prefix and gives stock's tokens.
    again = _generate(worker, edited, conversation, 5)
    assert again.stats.prompt_tokens == second.stats.prompt_tokens
    assert second.stats.cached_tokens < again.stats.cached_tokens < again.stats.prompt_tokens
    assert again.token_ids == _generate(worker, edited, "", 5).token_ids
    # A different first message shares nothing past <bos> and the turn marker: not served from the cache.
    other = [user("Something else entirely"), assistant("ok"), user("Really?")]
    third = _generate(worker, other, conversation, 4)
    assert third.stats.cached_tokens == 0
    assert third.token_ids == _generate(worker, other, "", 4).token_ids
