"""The real DiffusionGemma checkpoint's config, shipped without weights, and config lookup by id or folder.

Standard library only (the planner imports this and must start fast, offline, without torch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.hub import REAL_MODEL_ID, cached_config

# Folder names under resources/models/ for the hub ids whose config ships with the app.
_SHIPPED = {
    REAL_MODEL_ID.lower(): "diffusiongemma-26B-A4B-it",
}

# The shipped config.json and generation_config.json are the published files, byte for byte (size
# and SHA-256 checked in tests/quant/test_real_checkpoint.py); a model built from them on the meta
# device has 25.82 B parameters (experts 22.84 B, vision 0.57 B) and every tensor of the checkpoint's
# list (tests/quant/real_model_tensors.json) at its published shape.
SHIPPED_CONFIG_PROVENANCE = "the published config.json and generation_config.json of google/diffusiongemma-26B-A4B-it"


class ModelConfigNotFound(LookupError):
    """Neither a folder with a config.json, a shipped config nor a cached hub download."""


def resources_models_dir() -> Path:
    import resources

    return Path(resources.__file__).resolve().parent / "models"


def shipped_model_dir(model_id: str) -> Path | None:
    """The resources folder holding `model_id`'s config.json, or None if it does not ship."""
    name = _SHIPPED.get(model_id.strip().lower())
    if name is None:
        return None
    folder = resources_models_dir() / name
    return folder if (folder / "config.json").is_file() else None


def resolve_config_path(model: str | os.PathLike) -> Path:
    """config.json for a local model folder, a shipped hub id, or a hub id already downloaded.

    A local folder wins over everything; a shipped config wins over the hub cache so that the answer
    is the same before and after the download.
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path / "config.json"
    if path.is_file() and path.name.endswith(".json"):
        return path
    shipped = shipped_model_dir(text)
    if shipped is not None:
        return shipped / "config.json"
    cached = cached_config(text)
    if cached is not None:
        return cached
    raise ModelConfigNotFound(
        f"no config for {text!r}: not a folder with a config.json, not a model whose config ships with "
        f"Canvas Chat ({', '.join(sorted(_SHIPPED))}), and not in the local download cache"
    )


def load_config_dict(model: str | os.PathLike) -> dict[str, Any]:
    """The model's config.json as a dict (see `resolve_config_path` for the lookup order)."""
    with open(resolve_config_path(model), encoding="utf-8") as handle:
        return json.load(handle)


def scaled_config_dict(
    config: dict[str, Any],
    *,
    hidden_size: int = 64,
    head_dim: int = 16,
    num_experts: int | None = None,
    top_k_experts: int | None = None,
    vocab_size: int | None = None,
    canvas_length: int | None = None,
) -> dict[str, Any]:
    """`config` with every width shrunk and its structure kept: the same layer types and counts
    (text and vision), the same attention layout (K = V on full layers, fewer KV heads than query
    heads), so a model built from it holds exactly the real checkpoint's tensor names.

    Experts, vocabulary and canvas keep their real sizes unless given (they set how many kernels a
    step launches, not how wide they are).
    """
    import copy

    scaled = copy.deepcopy(config)
    text = scaled["text_config"]
    heads = max(2, text["num_attention_heads"] // 8)
    text.update(
        hidden_size=hidden_size,
        intermediate_size=hidden_size,
        moe_intermediate_size=hidden_size // 2,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        num_global_key_value_heads=1,
        head_dim=head_dim,
        global_head_dim=2 * head_dim,
        sliding_window=min(text.get("sliding_window", 1024), 1024),
    )
    if num_experts is not None:
        text["num_experts"] = num_experts
    if top_k_experts is not None:
        text["top_k_experts"] = top_k_experts
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    vision = scaled.get("vision_config")
    if vision:
        vision.update(hidden_size=16, intermediate_size=16, num_attention_heads=2, num_key_value_heads=2,
                      head_dim=8, global_head_dim=8, position_embedding_size=64)
    if canvas_length is not None:
        scaled["canvas_length"] = canvas_length
    return scaled
