"""The memory planner's KV cache against what the preallocated cache (engine/kv_cache.py) really
allocates: measured on the tiny model through a real conversation, and on the real model's shapes
(meta tensors, nothing allocated) at the context the setup screen plans for."""

from __future__ import annotations

import copy

import pytest
import torch

from engine import generation
from engine.conversations import ConversationCaches
from engine.kv_cache import preallocated_cache
from engine.planner import architecture_from_config, kv_cache_bytes, kv_cache_resident_bytes, plan
from engine.protocol import GenerationSettings
from engine.real_config import REAL_MODEL_ID, load_config_dict

# Over 256 tokens: the full-attention buffers start smaller and double during the conversation.
QUESTIONS = ["Summarise this: " + "the quick brown fox jumps over the lazy dog, " * 25, "And then?"]


def allocated_bytes(cache) -> int:
    """Bytes of the buffers the cache's layers own (views of them counted once)."""
    storages = {}
    for layer in cache.layers:
        for tensor in (layer.buffers.keys, layer.buffers.values):
            if tensor is not None:
                storages[id(tensor)] = tensor.untyped_storage().nbytes()
    return sum(storages.values())


def test_the_planned_kv_cache_is_what_a_tiny_conversation_allocates(tiny_model_dir):
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    # bf16, as the real model runs (the planner counts bf16 K and V).
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    caches, messages = ConversationCaches(), []
    for turn, question in enumerate(QUESTIONS):  # as the worker runs a conversation
        messages.append({"role": "user", "content": question})
        turn_plan = caches.plan(tokenizer, "chat", messages, reuse_cache=True)
        result = generation.run_generation(
            model, tokenizer, turn_plan.input_ids, GenerationSettings(seed=turn, max_new_tokens=48),
            past_key_values=turn_plan.past_key_values, cached_tokens=turn_plan.cached_tokens,
            keep_prefix=turn_plan.keep_prefix,
        )
        caches.remember("chat", turn_plan.full_ids[: turn_plan.keep_prefix], result.prefix_cache)
        messages.append({"role": "assistant", "content": tokenizer.decode(result.token_ids, skip_special_tokens=True)})

    live = result.past_key_values
    canvas = model.config.canvas_length
    context = live.get_seq_length() + canvas  # what it holds, and its last canvas
    assert context > 256
    arch = architecture_from_config(model.config.to_dict())
    assert allocated_bytes(live) == kv_cache_resident_bytes(arch, context, canvas)
    # The copy a turn keeps for the next one: never larger, and as large when taken at the same point.
    assert allocated_bytes(result.prefix_cache) <= allocated_bytes(live) == allocated_bytes(copy.deepcopy(live))
    assert kv_cache_bytes(arch, context) == 2 * allocated_bytes(live)
    assert plan(model.config.to_dict(), "bf16", context, 2**40).kv_cache_bytes == kv_cache_bytes(arch, context)


class _MetaModel:
    """What preallocated_cache reads of a model: its config (and modules, for the decoder's reads)."""

    def __init__(self, config):
        self.config = config

    def modules(self):
        return iter(())


@pytest.mark.parametrize("context", [8192, 12_000])
def test_the_planned_kv_cache_is_what_the_real_models_cache_allocates(context):
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    config_dict = load_config_dict(REAL_MODEL_ID)
    config = DiffusionGemmaConfig.from_dict(dict(config_dict))
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    shapes = {}  # layer index -> (K/V heads, head dim), from the modeling code's own projections
    for name, module in model.named_modules():
        if name.startswith("model.encoder.language_model.") and name.endswith("self_attn"):
            shapes[module.layer_idx] = (next(module.k_proj.parameters()).shape[0] // module.head_dim, module.head_dim)
    canvas = config.canvas_length
    cache = preallocated_cache(_MetaModel(config), canvas, context_hint=1024)  # a first turn's hint
    prompt = context - 3 * canvas
    for index, layer in enumerate(cache.layers):
        heads, head_dim = shapes[index]
        for tokens in (prompt, canvas, canvas):  # the prompt, then two canvases encoded
            states = torch.empty((1, heads, tokens, head_dim), dtype=torch.bfloat16, device="meta")
            layer.update(states, states)
        states = torch.empty((1, heads, canvas, head_dim), dtype=torch.bfloat16, device="meta")
        layer.read_with(states, states)  # the last canvas, read with the cache
    arch = architecture_from_config(config_dict)
    assert allocated_bytes(cache) == kv_cache_resident_bytes(arch, context, canvas)
    assert plan(config_dict, "nf4", context, 24 * 2**30).kv_cache_bytes == 2 * allocated_bytes(cache)
