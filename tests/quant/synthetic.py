"""A synthetic multi-shard DiffusionGemma checkpoint (random bf16 weights) for streaming-load tests.

Written straight with safetensors (no model in memory), in the layout `save_pretrained` uses: the
decoder holds the text weights the encoder shares, lm_head is not stored.
"""

from __future__ import annotations

import json
from pathlib import Path


def synthetic_config(hidden: int = 256, layers: int = 8, experts: int = 32, moe: int = 512, vocab: int = 8192):
    from transformers import DiffusionGemmaConfig

    text_config = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        global_head_dim=128,
        num_global_key_value_heads=1,
        layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"],
        sliding_window=64,
        num_experts=experts,
        top_k_experts=4,
        moe_intermediate_size=moe,
        enable_moe_block=True,
        max_position_embeddings=4096,
    )
    vision_config = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=8)
    config = DiffusionGemmaConfig(text_config=text_config, vision_config=vision_config, canvas_length=16)
    config.dtype = "bfloat16"
    return config


def _stored(name: str) -> bool:
    if name == "lm_head.weight":
        return False
    if name.startswith("model.encoder.language_model."):
        return name.endswith("layer_scalar")
    return True


def build_sharded_checkpoint(folder: Path, *, shard_bytes: int = 40 * 1024**2, **sizes) -> Path:
    """Writes config + random bf16 weights in several safetensors shards; returns the folder."""
    import torch
    from safetensors.torch import save_file
    from transformers import DiffusionGemmaForBlockDiffusion

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = synthetic_config(**sizes)
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    generator = torch.Generator().manual_seed(0)
    shards: list[list[tuple[str, torch.Size]]] = [[]]
    size = 0
    for name, tensor in model.state_dict().items():
        if not _stored(name):
            continue
        nbytes = tensor.numel() * 2
        if size and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, tensor.shape))
        size += nbytes
    weight_map = {}
    total = 0
    for index, entries in enumerate(shards, 1):
        file_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in entries:
            if name.endswith(("norm.weight", "layer_scalar", "scale", "per_expert_scale", "layernorm.weight")) or "norm" in name.rsplit(".", 2)[-2]:
                value = torch.ones(shape, dtype=torch.bfloat16)
            else:
                value = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
            tensors[name] = value
            weight_map[name] = file_name
            total += value.numel() * 2
        save_file(tensors, str(folder / file_name), metadata={"format": "pt"})
        del tensors
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    config.save_pretrained(str(folder))
    return folder
