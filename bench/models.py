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


def quantize_nf4(model: Any, quantization: str = "nf4") -> str:
    """Quantizes `model` in place to NF4 with the engine's own path (engine/quantization.py).

    DiffusionGemma goes through `engine.quantization.quantize_model`, exactly as a benchmark of
    the app should. The AR baseline gets the same primitives on Gemma 4's experts, which have the
    same (experts, 2I, H) / (experts, H, I) layout, so both sides carry the same 4-bit weights:
    text linears and experts in NF4; embedding, router, norms and lm_head in bf16.
    Raises ImportError when the engine has no NF4 path (or bitsandbytes is missing).
    """
    from engine import quantization as q
    from transformers import DiffusionGemmaForBlockDiffusion
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextExperts

    q._bnb()  # ImportError here when bitsandbytes is not installed
    if isinstance(model, DiffusionGemmaForBlockDiffusion):
        q.quantize_model(model, quantization)
        return "engine.quantization.quantize_model"
    settings = q.settings_for(quantization)
    compute_dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    for name, module in list(model.named_modules()):
        if q.is_text_linear(name, module):
            q.set_submodule(model, name, q.quantize_linear(module.weight.data, settings, module.weight.device, compute_dtype))
        elif isinstance(module, Gemma4TextExperts):
            for attr in ("gate_up_proj", "down_proj"):
                data = getattr(module, attr).data
                weight = q.NF4ExpertWeight.quantize(
                    lambda a, b, data=data: data[a:b], tuple(data.shape), settings, data.device, compute_dtype
                )
                q.set_submodule(model, f"{name}.{attr}", weight)
                del data
    q.use_nf4_experts(model)
    return "engine.quantization primitives (quantize_linear, NF4ExpertWeight) on Gemma4TextExperts"


def release() -> None:
    """Frees the memory of models already dropped by the caller (both architectures do not fit a GPU at once)."""
    import torch

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


def weight_gib(model: Any) -> float:
    """Memory the weights take, quantized buffers included."""
    total = 0
    seen: set[int] = set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen and tensor.device.type != "meta":
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return round(total / 1024**3, 3)
