"""Bidirectional attention over shared K/V heads without `repeat_kv` (the CUDA fast path).

transformers' SDPA path copies K and V once per query group (`repeat_kv`) unless there is no mask
and the head dim is at most 256; DiffusionGemma's full-attention layers have 512. With no mask and
no causality, a query row's result does not depend on the other rows, so the query heads that
share a K/V head can be stacked as extra rows of that head instead: the copy is of the canvas's
queries, not of the whole context's keys and values.
"""

from __future__ import annotations

import torch

ATTENTION_IMPLEMENTATION = "canvas_sdpa"


def packed_gqa_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward, use_gqa_in_sdpa

    groups = getattr(module, "num_key_value_groups", 1)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # Where SDPA reads the shared heads itself (enable_gqa: no mask, head dim <= 256), it is left to.
    sdpa_reads_shared_heads = use_gqa_in_sdpa(attention_mask, key, value)
    if groups == 1 or sdpa_reads_shared_heads or attention_mask is not None or causal or dropout \
            or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, rows, head_dim = query.shape
    kv_heads = key.shape[1]
    # repeat_kv's order: K/V head j serves query heads j * groups ... (j + 1) * groups - 1.
    packed = query.reshape(batch, kv_heads, groups * rows, head_dim)
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, scale=scaling)
    out = out.reshape(batch, heads, rows, value.shape[-1]).transpose(1, 2).contiguous()
    return out, None


def use_packed_gqa_attention(model) -> None:
    """Makes every attention layer of `model` go through `packed_gqa_attention` (causal or masked
    calls fall through to transformers' SDPA path unchanged)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, packed_gqa_attention)
    model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
