"""The preallocated KV cache (engine/kv_cache.py): a long conversation, well past the tiny model's
sliding window (64 tokens), gets token for token the replies that transformers' DynamicCache gives,
and a denoising step neither concatenates nor copies the context it reads."""

from __future__ import annotations

import pytest
import torch

from engine import generation
from engine.conversations import ConversationCaches
from engine.kv_cache import PreallocatedLayer, PreallocatedSlidingLayer
from engine.protocol import GenerationSettings

# The fourth is longer than a sliding layer's buffer holds at once (two windows and two canvases).
QUESTIONS = ["Tell me a long story about the sea.", "And then?", "Why did that happen?",
             "Summarise this: " + "the quick brown fox jumps over the lazy dog, " * 30, "What is 3 + 4?"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir)).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _dynamic_cache(model, max_length):
    from transformers import DynamicCache

    return DynamicCache(config=model.config.get_text_config(decoder=True))


def _conversation(model, tokenizer) -> tuple[list[list[int]], list]:
    """Five turns as the worker runs them (each follow-up from the conversation's cached prefix)."""
    caches = ConversationCaches()
    messages: list[dict[str, str]] = []
    replies, kept = [], []
    for turn, question in enumerate(QUESTIONS):
        messages.append({"role": "user", "content": question})
        plan = caches.plan(tokenizer, "chat", messages, reuse_cache=True)
        assert (plan.cached_tokens > 0) == (turn > 0)  # follow-ups really start from the cache
        result = generation.run_generation(
            model, tokenizer, plan.input_ids, GenerationSettings(seed=turn, max_new_tokens=48),
            past_key_values=plan.past_key_values, cached_tokens=plan.cached_tokens, keep_prefix=plan.keep_prefix,
        )
        caches.remember("chat", plan.full_ids[: plan.keep_prefix], result.prefix_cache)
        kept.append(result.past_key_values)
        replies.append(result.token_ids)
        messages.append({"role": "assistant", "content": tokenizer.decode(result.token_ids, skip_special_tokens=True)})
    assert len(plan.full_ids) + len(replies[-1]) > 4 * model.config.text_config.sliding_window
    return replies, kept


def test_a_long_conversation_past_the_sliding_window_gives_the_dynamic_cache_replies(tiny, monkeypatch):
    model, tokenizer = tiny
    preallocated, caches = _conversation(model, tokenizer)
    assert any(isinstance(layer, PreallocatedSlidingLayer) for layer in caches[-1].layers)
    assert any(isinstance(layer, PreallocatedLayer) for layer in caches[-1].layers)
    monkeypatch.setattr(generation, "new_generation_cache", _dynamic_cache)
    dynamic, caches = _conversation(model, tokenizer)
    assert not any(isinstance(layer, (PreallocatedLayer, PreallocatedSlidingLayer)) for layer in caches[-1].layers)
    assert preallocated == dynamic


def _decoder_forward_copies(model, cache, prompt_tokens: int) -> dict[str, int]:
    """Bytes each kind of op writes in one decoder forward over a canvas after `prompt_tokens`."""
    from bench.profile_forward import census

    canvas = model.config.canvas_length
    ids = torch.randint(3, model.config.text_config.vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.model.encoder(input_ids=ids, past_key_values=cache, use_cache=True)
        canvas_ids = torch.randint(3, model.config.text_config.vocab_size, (1, canvas))
        positions = torch.arange(prompt_tokens, prompt_tokens + canvas, dtype=torch.int32).unsqueeze(0)
        with census() as counts:
            model(decoder_input_ids=canvas_ids, past_key_values=cache, decoder_position_ids=positions)
    written: dict[str, int] = {}
    for key, size in counts.largest_temps.items():
        op = key.split(" ")[0]
        written[op] = written.get(op, 0) + size
    return written


def test_a_denoising_step_writes_as_much_at_a_long_context_as_at_a_short_one(tiny):
    model, _ = tiny
    short = _decoder_forward_copies(model, generation.new_generation_cache(model, 1024), 40)
    long = _decoder_forward_copies(model, generation.new_generation_cache(model, 1024), 400)
    assert "aten::cat" not in long or long["aten::cat"] == short.get("aten::cat")
    assert sum(long.values()) == sum(short.values())
    # DynamicCache concatenates the whole context on every layer of every step
    dynamic_short = _decoder_forward_copies(model, _dynamic_cache(model, 0), 40)
    dynamic_long = _decoder_forward_copies(model, _dynamic_cache(model, 0), 400)
    assert dynamic_long["aten::cat"] > dynamic_short["aten::cat"]
