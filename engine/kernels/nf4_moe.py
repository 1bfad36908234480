"""Fused NF4 GEMMs in Triton: the MoE experts (sorted by expert, GELU-gated) and the text linears.

Weights are read as stored by `NF4ExpertWeight` / bitsandbytes' `Linear4bit` (packed codes, blockwise
absmax, optionally double-quantized) and decoded in registers; see docs/quantization.md.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any

import torch

log = logging.getLogger(__name__)

# CANVAS_CHAT_NF4_KERNEL: "auto" (default: fused experts where available, bitsandbytes linears),
# "all" (fused experts and fused text linears), "off" (the dequantize-then-matmul path everywhere).
KERNEL_MODES = ("auto", "all", "off")

ACTIVATIONS = {"GELUTanh": 0, "PytorchGELUTanh": 0, "SiLUActivation": 1, "SiLU": 1}


def kernel_mode() -> str:
    mode = os.environ.get("CANVAS_CHAT_NF4_KERNEL", "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        log.warning("CANVAS_CHAT_NF4_KERNEL=%r is not one of %s; using auto", mode, "/".join(KERNEL_MODES))
        return "auto"
    return mode


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything on import
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why the fused kernels cannot run on `device`, or None when they can."""
    error = _triton_import_error()
    if error:
        return error
    device = torch.device(device)
    if interpreting():
        return None
    if device.type != "cuda":
        return f"the model is on {device.type}, not a CUDA GPU"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return f"the GPU is sm_{major}{minor}; the bf16 kernel needs sm_80 or newer"
    return None


def activation_code(act_fn: Any) -> int | None:
    return ACTIVATIONS.get(type(act_fn).__name__)


# ---------------------------------------------------------------------------- sort and pad


def align_by_expert(top_k_index: torch.Tensor, num_experts: int, block_m: int):
    """Routed (token, k) slots sorted by expert, each expert's run padded to a multiple of `block_m`.

    Returns (sorted_slots, block_experts, num_padded): `sorted_slots[i]` is the flat slot id
    (token * top_k + k) at padded position i, or `top_k_index.numel()` for padding;
    `block_experts[b]` the expert of the b-th block of `block_m` positions; `num_padded` a
    one-element tensor with the used length. Shapes depend only on the input's shape, and no op
    reads a value back to the host (no .item(), no bincount, no boolean indexing).
    """
    device = top_k_index.device
    flat = top_k_index.reshape(-1).to(torch.int64)
    slots = flat.numel()
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + (block_m - 1)) // block_m * block_m
    padded_end = padded.cumsum(0)
    padded_start = padded_end - padded
    start = counts.cumsum(0) - counts
    order = torch.argsort(flat, stable=True)
    experts_sorted = flat[order]
    position = padded_start[experts_sorted] + torch.arange(slots, device=device) - start[experts_sorted]
    # Each used expert adds at most block_m - 1 padding rows, and at most `slots` experts are used.
    capacity = slots + min(num_experts, slots) * (block_m - 1)
    num_blocks = max(1, -(-capacity // block_m))
    sorted_slots = torch.full((num_blocks * block_m,), slots, dtype=torch.int64, device=device)
    sorted_slots.scatter_(0, position, order)
    block_starts = torch.arange(num_blocks, device=device, dtype=torch.int64) * block_m
    block_experts = torch.searchsorted(padded_end, block_starts, right=True).clamp_(max=num_experts - 1)
    return sorted_slots, block_experts, padded_end[-1:]


# ---------------------------------------------------------------------------- the kernel


@lru_cache(maxsize=1)
def _kernel():
    from engine.kernels._nf4_triton import nf4_gemm

    return nf4_gemm


class NF4Operand:
    """The buffers one fused GEMM reads: packed codes, absmax (fp32, or uint8 + nested statistics)."""

    def __init__(self, packed, absmax, code, blocksize, nested_absmax=None, nested_code=None, nested_offset=None,
                 nested_blocksize=256):
        self.packed = packed.reshape(-1)
        self.absmax = absmax.reshape(-1)
        self.code = code.float()
        self.blocksize = int(blocksize)
        self.double_quant = nested_absmax is not None and nested_absmax.numel() > 0
        empty = torch.zeros(1, dtype=torch.float32, device=packed.device)
        self.nested_absmax = nested_absmax.float() if self.double_quant else empty
        self.nested_code = nested_code.float() if self.double_quant else empty
        self.nested_offset = nested_offset.float().reshape(-1) if self.double_quant else empty
        self.nested_blocksize = int(nested_blocksize)
        if not self.double_quant and self.absmax.dtype != torch.float32:
            self.absmax = self.absmax.float()

    @classmethod
    def of_expert_weight(cls, weight) -> "NF4Operand":
        cached = weight.__dict__.get("_fused_operand")
        if cached is None or cached.packed.data_ptr() != weight.packed.data_ptr():
            cached = cls(weight.packed, weight.absmax, weight.code, weight.settings.blocksize, weight.nested_absmax,
                         weight.nested_code, weight.nested_offset, weight.settings.nested_blocksize)
            weight.__dict__["_fused_operand"] = cached
        return cached

    @classmethod
    def of_linear4bit(cls, module) -> "NF4Operand":
        weight = module.weight
        state = weight.quant_state
        cached = module.__dict__.get("_fused_operand")
        if cached is None or cached.packed.data_ptr() != weight.data.data_ptr():
            if state.nested:
                cached = cls(weight.data, state.absmax, state.code, state.blocksize, state.state2.absmax,
                             state.state2.code, state.offset, state.state2.blocksize)
            else:
                cached = cls(weight.data, state.absmax, state.code, state.blocksize)
            module.__dict__["_fused_operand"] = cached
        return cached


# The kernels are torch custom ops: each launch is one op to the dispatcher (one op in a
# TorchDispatchMode count, a node CUDA graphs and torch.compile can see), and their fake kernels
# let the launches be counted, or traced, without running them (bench/profile_forward.py).
_GEMM_FLAGS = ("BLOCKSIZE", "NESTED_BLOCKSIZE", "DOUBLE_QUANT", "ROUTED", "A_FROM_SLOT", "OUT_TO_SLOT", "GATED",
               "ACTIVATION", "ROUTE_WEIGHTS", "DOT_FP32", "BLOCK_M", "BLOCK_N", "BLOCK_K")
_BOOL_FLAGS = {"DOUBLE_QUANT", "ROUTED", "A_FROM_SLOT", "OUT_TO_SLOT", "GATED", "ROUTE_WEIGHTS", "DOT_FP32"}


@torch.library.custom_op("canvas::nf4_gemm", mutates_args=("out",))
def nf4_gemm_op(a: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                nested_absmax: torch.Tensor, nested_code: torch.Tensor, nested_offset: torch.Tensor, out: torch.Tensor,
                sorted_slots: torch.Tensor, block_experts: torch.Tensor, num_padded: torch.Tensor,
                route_weights: torch.Tensor, sizes: list[int], flags: list[int]) -> None:
    """One launch of the fused NF4 GEMM; `sizes` = (num_rows, N, K, weight_rows, a_div, grid_m)."""
    num_rows, n, k, weight_rows, a_div, grid_m = sizes
    meta = {name: bool(v) if name in _BOOL_FLAGS else v for name, v in zip(_GEMM_FLAGS, flags)}
    _kernel()[(grid_m, -(-n // meta["BLOCK_N"]))](
        a, a.stride(0), packed, absmax, code, nested_absmax, nested_code, nested_offset, out, out.stride(0),
        sorted_slots, block_experts, num_padded, route_weights, num_rows, n, k, weight_rows, a_div, **meta,
    )


@nf4_gemm_op.register_fake
def _nf4_gemm_fake(a, packed, absmax, code, nested_absmax, nested_code, nested_offset, out, sorted_slots,
                   block_experts, num_padded, route_weights, sizes, flags) -> None:
    return None


@torch.library.custom_op("canvas::align_by_expert", mutates_args=("sorted_slots", "block_experts", "num_padded"))
def align_by_expert_op(flat: torch.Tensor, sorted_slots: torch.Tensor, block_experts: torch.Tensor,
                       num_padded: torch.Tensor, num_experts: int, block_m: int) -> None:
    """`align_by_expert` in one launch: (num_experts + 1) programs, see _nf4_triton.align_by_expert."""
    from engine.kernels._nf4_triton import align_by_expert as kernel

    chunk = 16 if interpreting() else 64
    kernel[(num_experts + 1,)](flat, sorted_slots, block_experts, num_padded, flat.numel(), num_experts,
                               sorted_slots.numel(), BLOCK_M=block_m, EXPERTS_POW2=max(16, 1 << (num_experts - 1).bit_length()),
                               CHUNK=chunk)


@align_by_expert_op.register_fake
def _align_fake(flat, sorted_slots, block_experts, num_padded, num_experts, block_m) -> None:
    return None


def align_by_expert_fused(top_k_index: torch.Tensor, num_experts: int, block_m: int):
    """`align_by_expert`'s result from one Triton launch instead of ~20 torch ops."""
    flat = top_k_index.reshape(-1)
    if flat.dtype != torch.int64 or not flat.is_contiguous():
        flat = flat.to(torch.int64).contiguous()
    slots = flat.numel()
    num_blocks = max(1, -(-(slots + min(num_experts, slots) * (block_m - 1)) // block_m))
    sorted_slots = torch.empty(num_blocks * block_m, dtype=torch.int64, device=flat.device)
    block_experts = torch.empty(num_blocks, dtype=torch.int64, device=flat.device)
    num_padded = torch.empty(1, dtype=torch.int64, device=flat.device)
    torch.ops.canvas.align_by_expert(flat, sorted_slots, block_experts, num_padded, num_experts, block_m)
    return sorted_slots, block_experts, num_padded


def _launch(a, operand: NF4Operand, out, *, num_rows, n, k, weight_rows, routing=None, a_from_slot=False,
            out_to_slot=False, a_div=1, gated=False, activation=0, route_weights=None, block_m=16, block_n=64,
            block_k=64):
    dot_fp32 = interpreting() or a.dtype == torch.float32
    if routing is not None:
        sorted_slots, block_experts, num_padded = routing
        grid_m = block_experts.numel()
    else:
        sorted_slots = block_experts = num_padded = torch.empty(1, dtype=torch.int64, device=out.device)  # unread
        grid_m = -(-num_rows // block_m)
    weights = route_weights if route_weights is not None else torch.empty(1, dtype=torch.float32, device=out.device)
    flags = [operand.blocksize, operand.nested_blocksize, operand.double_quant, routing is not None, a_from_slot,
             out_to_slot, gated, activation, route_weights is not None, dot_fp32, block_m, block_n, block_k]
    torch.ops.canvas.nf4_gemm(a, operand.packed, operand.absmax, operand.code, operand.nested_absmax,
                              operand.nested_code, operand.nested_offset, out, sorted_slots, block_experts, num_padded,
                              weights, [num_rows, n, k, weight_rows, a_div, grid_m], [int(f) for f in flags])


def block_sizes(num_slots: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): 16-row blocks suit the ~16 rows an expert gets from a 256-token canvas."""
    if interpreting():
        return 16, 32, 32  # the interpreter runs programs one by one: few, mid-sized tiles are quickest
    return (16 if num_slots <= 4096 else 64), 64, 64


def fused_moe(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, gate_up, down,
              activation: int) -> torch.Tensor:
    """The experts forward on NF4 weights in three kernels plus the sort: gate_up+act, down*weight, sum over k.

    `gate_up` (E, 2I, H) and `down` (E, H, I) are `NF4ExpertWeight`s. The sum over top-k is a plain
    reduction in (token, k) order, so results do not depend on thread scheduling (no atomics).
    """
    num_tokens, hidden = hidden_states.shape
    top_k = top_k_index.shape[-1]
    experts, two_inter, _ = gate_up.shape
    inter = two_inter // 2
    num_slots = num_tokens * top_k
    if num_tokens == 0:
        return torch.zeros_like(hidden_states)
    block_m, block_n, block_k = block_sizes(num_slots)
    routing = align_by_expert_fused(top_k_index, experts, block_m)
    x = hidden_states.contiguous()
    intermediate = torch.empty(routing[0].numel(), inter, dtype=x.dtype, device=x.device)
    _launch(x, NF4Operand.of_expert_weight(gate_up), intermediate, num_rows=num_slots, n=inter, k=hidden,
            weight_rows=two_inter, routing=routing, a_from_slot=True, a_div=top_k, gated=True, activation=activation,
            block_m=block_m, block_n=block_n, block_k=block_k)
    per_slot = torch.empty(num_slots, hidden, dtype=torch.float32, device=x.device)
    weights = top_k_weights.reshape(-1).contiguous()
    _launch(intermediate, NF4Operand.of_expert_weight(down), per_slot, num_rows=num_slots, n=hidden, k=inter,
            weight_rows=hidden, routing=routing, out_to_slot=True, route_weights=weights,
            block_m=block_m, block_n=block_n, block_k=block_k)
    return per_slot.view(num_tokens, top_k, hidden).sum(dim=1).to(hidden_states.dtype)


def fused_linear(module, x: torch.Tensor) -> torch.Tensor:
    """`Linear4bit` forward (no bias) decoding its NF4 weight inside the GEMM."""
    operand = NF4Operand.of_linear4bit(module)
    out_features, in_features = module.weight.quant_state.shape
    rows = x.reshape(-1, in_features)
    if not rows.is_contiguous():
        rows = rows.contiguous()
    dtype = x.dtype
    out = torch.empty(rows.shape[0], out_features, dtype=dtype, device=x.device)
    if rows.shape[0]:
        _, block_n, block_k = block_sizes(rows.shape[0])
        block_m = 16 if interpreting() else 64
        _launch(rows, operand, out, num_rows=rows.shape[0], n=out_features, k=in_features, weight_rows=out_features,
                block_m=block_m, block_n=block_n, block_k=block_k)
    return out.reshape(*x.shape[:-1], out_features)
