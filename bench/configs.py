"""Architectures the benchmark builds with random weights: full-size from the shipped config, or tiny.

Speed depends on the shapes, not on the values, so random weights measure the real model's cost;
they say nothing about its quality.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import resources

MODEL_FOLDER = Path(resources.__file__).resolve().parent / "models" / "diffusiongemma-26B-A4B-it"

# Figures from shared MODEL_NOTES (computed from the published checkpoint), used only when the
# shipped config.json is missing.
FALLBACK_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 262144,
    "hidden_size": 2816,
    "intermediate_size": 2112,
    "num_hidden_layers": 30,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "num_global_key_value_heads": 2,
    "global_head_dim": 512,
    "attention_k_eq_v": True,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-06,
    "sliding_window": 1024,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 5,
    "final_logit_softcapping": 30.0,
    "enable_moe_block": True,
    "num_experts": 128,
    "top_k_experts": 8,
    "moe_intermediate_size": 704,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "rope_parameters": {
        "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
    },
}

# The text backbone shapes a tiny model shares between the diffusion and the AR architecture
# (same figures as tests/tiny_model.py, so CI exercises the same code in milliseconds).
SMALL_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_global_key_value_heads": 1,
    "global_head_dim": 32,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192,
    "sliding_window": 64,
    "layer_types": ["sliding_attention", "full_attention"],
    "final_logit_softcapping": 30.0,
    "enable_moe_block": True,
    "num_experts": 4,
    "top_k_experts": 2,
    "moe_intermediate_size": 64,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 1,
}

# The vision tower never runs for a text prompt; a one-layer stand-in keeps memory for the text model.
TINY_VISION_CONFIG: dict[str, Any] = {
    "model_type": "gemma4_vision",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 8,
}

# Keys of the text config that only the diffusion architecture knows.
_DIFFUSION_ONLY_KEYS = {"model_type", "dtype", "transformers_version", "architectures"}


def text_config_dict(size: str) -> tuple[dict[str, Any], str]:
    """The text backbone's figures and where they came from."""
    if size == "small":
        return copy.deepcopy(SMALL_TEXT_CONFIG), "bench.configs.SMALL_TEXT_CONFIG"
    path = MODEL_FOLDER / "config.json"
    if path.is_file():
        text = json.loads(path.read_text(encoding="utf-8"))["text_config"]
        return {k: v for k, v in text.items() if k not in _DIFFUSION_ONLY_KEYS}, str(path.relative_to(path.parents[3]))
    return copy.deepcopy(FALLBACK_TEXT_CONFIG), "bench.configs.FALLBACK_TEXT_CONFIG (MODEL_NOTES figures)"


def diffusion_config(size: str, canvas_length: int = 256):
    """A DiffusionGemmaConfig of the requested size (text-only use: tiny vision tower)."""
    from transformers import DiffusionGemmaConfig

    text, _ = text_config_dict(size)
    top = {}
    path = MODEL_FOLDER / "config.json"
    if size == "full" and path.is_file():
        shipped = json.loads(path.read_text(encoding="utf-8"))
        top = {k: shipped[k] for k in ("boi_token_id", "eoi_token_id", "image_token_id") if k in shipped}
    if size == "small":
        top = {"boi_token_id": 3, "eoi_token_id": 4, "image_token_id": 5}
    return DiffusionGemmaConfig(
        text_config=text,
        vision_config=dict(TINY_VISION_CONFIG),
        canvas_length=canvas_length,
        pad_token_id=text.get("pad_token_id", 0),
        bos_token_id=text.get("bos_token_id", 2),
        eos_token_id=text.get("eos_token_id", 1),
        **top,
    )


def autoregressive_config(size: str):
    """Gemma 4's autoregressive text model with DiffusionGemma's backbone sizes."""
    from transformers import Gemma4TextConfig

    text, _ = text_config_dict(size)
    text.pop("use_bidirectional_attention", None)  # text-only prompts: plain causal attention
    text.setdefault("attention_k_eq_v", text.get("attention_k_eq_v", False))
    # Gemma 4 26B-A4B has no per-layer input embeddings and no shared-KV layers (E2B/E4B do).
    text["hidden_size_per_layer_input"] = 0
    text["num_kv_shared_layers"] = 0
    return Gemma4TextConfig(**text)
