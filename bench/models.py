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


def meta_parameter_count(model_class: Any, config: Any) -> int:
    """Parameters of the architecture (before any quantization), counted without memory."""
    import torch

    with torch.device("meta"):
        return parameter_count(model_class._from_config(config, dtype=torch.bfloat16))


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


def build_nf4(model_class: Any, config: Any, device: str, seed: int = 0, quantization: str = "nf4"):
    """`model_class` with random NF4 weights, made tensor by tensor: the bf16 model never exists whole.

    Peak memory is the 4-bit model plus one tensor (the largest experts chunk), so the full-size
    suite's NF4 half runs on a 24 GB card. Same layout as `quantize_nf4` (engine/quantization.py
    primitives): text linears and experts in NF4; embedding, router, norms and lm_head in bf16.
    Rotary frequencies and embedding scales, which no weight file holds, are recomputed.
    """
    import torch
    from torch import nn

    from engine import quantization as q

    q._bnb()  # ImportError here when bitsandbytes is not installed
    dtype = torch.bfloat16
    settings = q.settings_for(quantization)
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = model_class._from_config(config, dtype=dtype)
    encoder = getattr(getattr(model, "model", None), "encoder", None)
    if encoder is not None and hasattr(encoder, "vision_tower"):
        # Text prompts never reach the vision tower (the engine drops it the same way).
        encoder.vision_tower = None
        encoder.embed_vision = None

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype) * 0.02

    modules = dict(model.named_modules(remove_duplicate=False))
    for names in q.alias_groups(model).values():
        owner_name, _, attr = names[0].rpartition(".")
        owner = modules[owner_name]
        shape = tuple(getattr(owner, attr).shape)
        if attr == "weight" and q.is_text_linear(owner_name, owner):
            quantized = q.quantize_linear(normal(*shape), settings, device, dtype)
            for name in names:
                q.set_submodule(model, name.rpartition(".")[0], quantized)
        elif attr in ("gate_up_proj", "down_proj") and len(shape) == 3:
            weight = q.NF4ExpertWeight.quantize(lambda a, b: normal(b - a, *shape[1:]), shape, settings, device, dtype)
            for name in names:
                q.set_submodule(model, name, weight)
        else:
            value = torch.ones(shape, device=device, dtype=dtype) if len(shape) == 1 else normal(*shape)
            parameter = nn.Parameter(value, requires_grad=False)
            for name in names:
                q.set_submodule(model, name, parameter)
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("TextRotaryEmbedding"):
            q.set_submodule(model, name, type(module)(module.config, device=device))
        elif hasattr(module, "scalar_embed_scale"):
            module.embed_scale = torch.tensor(module.scalar_embed_scale, device=device)
        for attr, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_meta:  # layer_scalar: one per layer
                module._buffers[attr] = torch.ones(buffer.shape, device=device, dtype=buffer.dtype)
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        raise RuntimeError(f"{len(leftovers)} tensors left on the meta device, e.g. {leftovers[0]}")
    q.use_nf4_experts(model)
    return model.eval()
