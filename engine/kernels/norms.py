"""DiffusionGemma's RMSNorm as one Triton launch (the CUDA fast path); torch's ops stay the exact path.

Each norm is ~7 kernels in eager torch (upcast, pow, mean, add, pow, mul, scale, downcast) and a
decoder layer has 11 of them: fused, they are 11 launches a layer instead of ~80.
"""

from __future__ import annotations

import logging
import os
import types

import torch
from torch import nn

log = logging.getLogger(__name__)

# Why the fused norm stopped being used in this process (it failed once: later calls go straight
# to torch's ops instead of failing again).
_failure: dict[str, str] = {}


@torch.library.custom_op("canvas::rms_norm", mutates_args=())
def rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float, with_scale: bool) -> torch.Tensor:
    from engine.kernels._norm_triton import rms_norm

    dim = x.shape[-1]
    rows = x.reshape(-1, dim)
    out = torch.empty_like(rows)
    if rows.shape[0]:
        block = triton_block(dim)
        per_program = rows_per_program(block)
        rms_norm[(-(-rows.shape[0] // per_program),)](rows, weight, out, rows.stride(0), out.stride(0), rows.shape[0],
                                                      dim, eps, WITH_SCALE=with_scale, ROWS=per_program, BLOCK=block)
    return out.view(x.shape)


@rms_norm_op.register_fake
def _rms_norm_fake(x, weight, eps, with_scale):
    return torch.empty_like(x)


def triton_block(dim: int) -> int:
    return max(16, 1 << (dim - 1).bit_length())


def rows_per_program(block: int) -> int:
    """Short rows (the per-head q/k/v norms) share a program; the interpreter runs programs one by one."""
    if os.environ.get("TRITON_INTERPRET", "") == "1":
        return 64
    return max(1, min(16, 4096 // block))


def fused_rms_norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """`DiffusionGemmaRMSNorm.forward` in one launch; torch's ops where the kernel failed once (logged)."""
    if not _failure:
        try:
            x = hidden_states if hidden_states.stride(-1) == 1 else hidden_states.contiguous()
            weight = self.weight if self.with_scale else x
            return torch.ops.canvas.rms_norm(x, weight, float(self.eps), bool(self.with_scale))
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # a Triton compile or launch error: torch's ops still work
            _failure["rms_norm"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            log.warning("fused RMSNorm kernel failed (%s); using torch's ops from now on", _failure["rms_norm"])
    return type(self).forward(self, hidden_states)


def use_fused_norms(model: nn.Module) -> int:
    """Routes every DiffusionGemmaRMSNorm's forward through the fused kernel. Returns how many."""
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaRMSNorm

    count = 0
    for module in model.modules():
        if isinstance(module, DiffusionGemmaRMSNorm):
            module.forward = types.MethodType(fused_rms_norm_forward, module)
            count += 1
    return count
