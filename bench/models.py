"""Builds the benchmark's models with random weights straight on the target device."""

from __future__ import annotations

import gc
import logging
from typing import Any

log = logging.getLogger(__name__)

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def build(model_class: Any, config: Any, device: str, dtype_name: str, seed: int = 0):
    """`model_class` from `config` with random weights, in eval mode, on `device`."""
    import torch

    torch.manual_seed(seed)
    dtype = getattr(torch, DTYPES.get(dtype_name, dtype_name))
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype)
    return model.eval()


def quantize_nf4(model: Any) -> str | None:
    """Quantizes `model` to NF4 with the engine's own path, if that path exists.

    Returns the name of the function used, or None when the engine has no such path yet.
    """
    try:
        from engine import quantization  # the fit issue's NF4 path (engine/quantization.py)
    except ImportError:
        return None
    for name in ("quantize_model_nf4", "quantize_nf4", "apply_nf4", "quantize_model"):
        function = getattr(quantization, name, None)
        if callable(function):
            function(model)
            return f"engine.quantization.{name}"
    return None


def release(*models: Any) -> None:
    """Frees models' memory before the next architecture is built (both do not fit a GPU at once)."""
    import torch

    del models
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parameter_count(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total
