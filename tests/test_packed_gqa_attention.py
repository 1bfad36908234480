"""engine/attention.py: the decoder's bidirectional attention reads shared K/V heads without
copying them per query group, and gives what transformers' SDPA path gives."""

from __future__ import annotations

import torch

from bench.profile_forward import census
from engine.attention import use_packed_gqa_attention
from engine.generation import new_generation_cache


def _decoder_forward(model, prompt_tokens: int):
    ids = torch.randint(3, model.config.text_config.vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    canvas = model.config.canvas_length
    canvas_ids = torch.randint(3, model.config.text_config.vocab_size, (1, canvas), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(prompt_tokens, prompt_tokens + canvas, dtype=torch.int32).unsqueeze(0)
    cache = new_generation_cache(model, prompt_tokens + canvas)
    with torch.no_grad():
        model.model.encoder(input_ids=ids, past_key_values=cache, use_cache=True)
        with census() as counts:
            logits = model(decoder_input_ids=canvas_ids, past_key_values=cache, decoder_position_ids=positions).logits
    return logits, counts


def _context_sized_copies(counts, context: int) -> list[str]:
    """Temporaries with a dimension as long as the context (a K/V copy), by op."""
    return [key for key in counts.largest_temps if f", {context}, " in key]


def test_the_decoder_attends_without_repeating_kv_and_gives_the_sdpa_result():
    """A tiny model whose full-attention head dim is over 256, as the real model's 512: there
    transformers' SDPA path repeats K/V (on a CPU as on CUDA)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    from engine.demo.train import small_diffusion_gemma_config

    from transformers import DiffusionGemmaConfig

    torch.manual_seed(0)
    config = small_diffusion_gemma_config(512, hidden_size=64, layer_types=["sliding_attention", "full_attention"],
                                          head_dim=16, global_head_dim=272, sliding_window=64, canvas_length=16).to_dict()
    # Two K/V heads on the full layer, as the real model (a single K/V head repeats as a view, no copy).
    config["text_config"]["per_layer_config"]["1"]["num_key_value_heads"] = 2
    model = DiffusionGemmaForBlockDiffusion(DiffusionGemmaConfig.from_dict(config)).eval()
    assert {m.num_key_value_groups for m in model.modules() if getattr(m, "head_dim", 0) == 272} == {2}
    prompt = 40
    context = prompt + model.config.canvas_length
    stock, stock_counts = _decoder_forward(model, prompt)
    assert _context_sized_copies(stock_counts, context)  # repeat_kv: K and V copied per query group
    use_packed_gqa_attention(model)
    packed, packed_counts = _decoder_forward(model, prompt)
    assert _context_sized_copies(packed_counts, context) == []
    assert (packed - stock).abs().max() / stock.abs().max() < 1e-5
    assert (packed.argmax(-1) == stock.argmax(-1)).all()
