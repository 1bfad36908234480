"""NF4 weights for DiffusionGemma: bitsandbytes 4-bit text linears AND MoE experts, and their forward.

transformers' stock `BitsAndBytesConfig(load_in_4bit=True)` only converts untied `nn.Linear`s, so the
3D experts (22.8 B of 25.8 B parameters) and the text weights the encoder shares with the decoder
stay bf16. Here every text linear becomes a `bnb.nn.Linear4bit` (one module shared by encoder and
decoder), every experts tensor an `NF4ExpertWeight`, and the experts run through an implementation
registered in transformers' `ExpertsInterface`: "canvas_nf4_fused" (engine/kernels: a Triton kernel that
decodes NF4 inside the GEMMs) on CUDA GPUs with Triton, else "canvas_nf4", which dequantizes a few
experts at a time (see docs/quantization.md). Embeddings, routers and norms stay in the model dtype.

Written against transformers 5.23 (DiffusionGemmaTextExperts layout: gate_up_proj (E, 2I, H),
down_proj (E, H, I)) and bitsandbytes 0.50.
"""

from __future__ import annotations

import logging
import os
import types
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

NF4_EXPERTS_IMPLEMENTATION = "canvas_nf4"
NF4_FUSED_EXPERTS_IMPLEMENTATION = "canvas_nf4_fused"
QUANTIZED_METHODS = ("nf4", "nf4-double")

# Modules whose nn.Linear stays unquantized: the vision side (loaded only on request and small), the
# router (its top-k choice is sensitive and it is 0.04% of the weights) and the lm_head (tied to the
# embedding, which stays in the model dtype).
_SKIP_LINEAR_PARTS = ("vision_tower", "embed_vision", "router", "lm_head")


@dataclass(frozen=True)
class QuantSettings:
    quant_type: str = "nf4"
    double_quant: bool = False
    blocksize: int = 64
    nested_blocksize: int = 256

    @property
    def name(self) -> str:
        return "nf4-double" if self.double_quant else "nf4"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def settings_for(quantization: str) -> QuantSettings:
    if quantization == "nf4":
        return QuantSettings()
    if quantization == "nf4-double":
        return QuantSettings(double_quant=True)
    raise ValueError(f"not a 4-bit quantization: {quantization!r} (use nf4 or nf4-double)")


def _bnb():
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_functional

    return bnb, bnb_functional


# ---------------------------------------------------------------------------- linears


def is_text_linear(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and not any(part in name for part in _SKIP_LINEAR_PARTS)


def quantize_linear(weight: torch.Tensor, settings: QuantSettings, device: torch.device | str, compute_dtype: torch.dtype) -> nn.Module:
    """A `bnb.nn.Linear4bit` holding `weight` (out, in) in NF4 on `device` (quantized there)."""
    bnb, _ = _bnb()
    out_features, in_features = weight.shape
    module = bnb.nn.Linear4bit(
        in_features,
        out_features,
        bias=False,
        compute_dtype=compute_dtype,
        compress_statistics=settings.double_quant,
        quant_type=settings.quant_type,
        quant_storage=torch.uint8,
        device="meta",
    )
    module.weight = bnb.nn.Params4bit(
        weight.detach().to(compute_dtype),
        requires_grad=False,
        blocksize=settings.blocksize,
        compress_statistics=settings.double_quant,
        quant_type=settings.quant_type,
        quant_storage=torch.uint8,
    )
    module = module.to(device)  # Params4bit quantizes when it is moved to its device
    return _cpu_layout_guard(module, compute_dtype)


def _cpu_layout_guard(module: nn.Module, compute_dtype: torch.dtype) -> nn.Module:
    # On CPUs with AVX512-BF16, bitsandbytes repacks a Linear4bit in eval mode on its first forward
    # into a layout whose absmax is bf16; with an fp32 model (the tiny test models) that adds
    # bf16-sized error on top of NF4's own. Keep the exact layout unless the model computes in bf16.
    if compute_dtype == torch.float32 and hasattr(module, "support_avx512bf16_for_cpu"):
        module.support_avx512bf16_for_cpu = False
    module.eval()
    return module


def linear_from_prequantized(
    packed: torch.Tensor, stats: dict[str, torch.Tensor], device: torch.device | str, compute_dtype: torch.dtype
) -> nn.Module:
    """Rebuilds a Linear4bit from the tensors `Linear4bit.state_dict()` wrote (keys after "weight.")."""
    bnb, _ = _bnb()
    weight = bnb.nn.Params4bit.from_prequantized(packed, stats, requires_grad=False, device=torch.device(device))
    out_features, in_features = weight.quant_state.shape
    module = bnb.nn.Linear4bit(
        in_features,
        out_features,
        bias=False,
        compute_dtype=compute_dtype,
        compress_statistics=weight.compress_statistics,
        quant_type=weight.quant_type,
        quant_storage=torch.uint8,
        device="meta",
    )
    module.weight = weight
    return _cpu_layout_guard(module, compute_dtype)


# ---------------------------------------------------------------------------- experts


class NF4ExpertWeight(nn.Module):
    """A 3D expert weight (experts, out, in) in NF4, stored so that any run of experts dequantizes alone.

    The whole tensor is quantized in blocks of `blocksize` along its flattened order; each expert is
    a whole number of blocks, so expert e's bytes and absmax values are contiguous slices. With double
    quantization the absmax values are themselves 8-bit in blocks of `nested_blocksize`.
    """

    def __init__(self, shape: tuple[int, int, int], settings: QuantSettings, dtype: torch.dtype):
        super().__init__()
        self.shape = tuple(int(x) for x in shape)
        self.settings = settings
        self.dtype = dtype
        experts, rows, cols = self.shape
        per_expert = rows * cols
        if per_expert % settings.blocksize or per_expert % 2:
            raise ValueError(f"expert size {rows}x{cols} is not a multiple of the {settings.blocksize}-value block")
        self.blocks_per_expert = per_expert // settings.blocksize
        self.bytes_per_expert = per_expert // 2
        self.register_buffer("packed", torch.empty(0, dtype=torch.uint8, device="meta"))
        self.register_buffer("absmax", torch.empty(0, device="meta"))
        self.register_buffer("code", torch.empty(0, device="meta"))
        self.register_buffer("nested_absmax", torch.empty(0, device="meta"))
        self.register_buffer("nested_code", torch.empty(0, device="meta"))
        self.register_buffer("nested_offset", torch.empty(0, device="meta"))

    @property
    def num_experts(self) -> int:
        return self.shape[0]

    def extra_repr(self) -> str:
        return f"shape={self.shape}, {self.settings.name}, blocksize={self.settings.blocksize}"

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())

    @classmethod
    def quantize(
        cls,
        read_experts,
        shape: tuple[int, int, int],
        settings: QuantSettings,
        device: torch.device | str,
        dtype: torch.dtype,
        chunk_experts: int = 16,
    ) -> "NF4ExpertWeight":
        """Quantizes `chunk_experts` experts at a time; `read_experts(start, stop)` returns them (any device).

        Chunking keeps the bf16 copy in flight to ~16 experts (126 MB for the real gate_up_proj);
        the result is identical to quantizing the whole tensor at once (blocks never straddle experts,
        and the nested statistics are computed once over all absmax values, as bitsandbytes does).
        """
        _, F = _bnb()
        self = cls(shape, settings, dtype)
        experts = shape[0]
        packed_parts, absmax_parts = [], []
        code = None
        for start in range(0, experts, chunk_experts):
            stop = min(start + chunk_experts, experts)
            chunk = read_experts(start, stop).to(device=device)
            if chunk.dtype not in (torch.float16, torch.bfloat16, torch.float32):
                chunk = chunk.float()
            packed, state = F.quantize_4bit(
                chunk.contiguous(), blocksize=settings.blocksize, quant_type=settings.quant_type, quant_storage=torch.uint8
            )
            del chunk
            packed_parts.append(packed.reshape(-1))
            absmax_parts.append(state.absmax.float().reshape(-1))
            code = state.code
        packed = torch.cat(packed_parts)
        absmax = torch.cat(absmax_parts)
        del packed_parts, absmax_parts
        self.packed = packed
        self.code = code
        if settings.double_quant:
            offset = absmax.mean()
            qabsmax, state2 = F.quantize_blockwise(absmax - offset, blocksize=settings.nested_blocksize)
            self.absmax = qabsmax
            self.nested_absmax = state2.absmax
            self.nested_code = state2.code
            self.nested_offset = offset.reshape(1)
        else:
            self.absmax = absmax
            self.nested_absmax = torch.empty(0, device=packed.device)
            self.nested_code = torch.empty(0, device=packed.device)
            self.nested_offset = torch.empty(0, device=packed.device)
        return self

    @classmethod
    def from_parts(cls, parts: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device | str) -> "NF4ExpertWeight":
        """Rebuilds a weight saved by `parts()` / `meta()` (the quantized copy on disk)."""
        settings = QuantSettings(**meta["settings"])
        self = cls(tuple(meta["shape"]), settings, getattr(torch, meta["dtype"]))
        for name in ("packed", "absmax", "code", "nested_absmax", "nested_code", "nested_offset"):
            setattr(self, name, parts[name].to(device))
        return self

    def parts(self) -> dict[str, torch.Tensor]:
        return dict(self.named_buffers())

    def meta(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "settings": self.settings.to_dict(), "dtype": str(self.dtype).removeprefix("torch.")}

    def _absmax(self, first_block: int, last_block: int) -> torch.Tensor:
        if not self.settings.double_quant:
            return self.absmax[first_block:last_block]
        from bitsandbytes.functional import QuantState, dequantize_blockwise

        nested = self.settings.nested_blocksize
        lo = first_block // nested * nested
        hi = min(-(-last_block // nested) * nested, self.absmax.numel())
        state2 = QuantState(
            absmax=self.nested_absmax[lo // nested : -(-hi // nested)],
            code=self.nested_code,
            blocksize=nested,
            dtype=torch.float32,
        )
        values = dequantize_blockwise(self.absmax[lo:hi], state2)
        values += self.nested_offset
        return values[first_block - lo : last_block - lo]

    def dequantize(self, start: int = 0, stop: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Experts [start, stop) as a dense (stop - start, out, in) tensor in `dtype`."""
        from bitsandbytes.functional import QuantState, dequantize_4bit

        stop = self.num_experts if stop is None else stop
        dtype = dtype or self.dtype
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            dtype = torch.float32
        count = stop - start
        packed = self.packed[start * self.bytes_per_expert : stop * self.bytes_per_expert].reshape(-1, 1)
        absmax = self._absmax(start * self.blocks_per_expert, stop * self.blocks_per_expert)
        state = QuantState(
            absmax=absmax.float().contiguous(),
            shape=torch.Size((count, *self.shape[1:])),
            code=self.code,
            blocksize=self.settings.blocksize,
            quant_type=self.settings.quant_type,
            dtype=dtype,
        )
        return dequantize_4bit(packed, state)


def _dequant_chunk(device: torch.device) -> int:
    """Experts dequantized at once. CPU: one (only the experts tokens were routed to). CUDA: a few,
    so that each dequantized chunk (8 x 12 MB for the real model) is reused from L2 by the matmuls
    instead of the whole layer's 1.5 GB going through DRAM (see docs/quantization.md)."""
    override = os.environ.get("CANVAS_CHAT_DEQUANT_CHUNK", "").strip()
    if override.isdigit() and int(override) > 0:
        return int(override)
    return 8 if device.type == "cuda" else 1


def nf4_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """Experts forward on NF4 weights: tokens sorted by expert, a few experts dequantized at a time."""
    gate_up = self.gate_up_proj
    down = self.down_proj
    if not isinstance(gate_up, NF4ExpertWeight):
        return _eager_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    num_tokens, hidden_dim = hidden_states.shape
    top_k = top_k_index.shape[-1]
    compute_dtype = hidden_states.dtype
    expert_ids = top_k_index.reshape(-1)
    order = torch.argsort(expert_ids, stable=True)
    counts = torch.bincount(expert_ids, minlength=self.num_experts)[: self.num_experts].tolist()
    routed = hidden_states[order // top_k]
    output = torch.empty(routed.shape[0], hidden_dim, dtype=compute_dtype, device=hidden_states.device)
    chunk = _dequant_chunk(hidden_states.device)
    row = 0
    for first in range(0, self.num_experts, chunk):
        last = min(first + chunk, self.num_experts)
        rows = sum(counts[first:last])
        if rows == 0:
            continue
        w_gate_up = gate_up.dequantize(first, last, compute_dtype)  # (n, 2I, H)
        w_down = down.dequantize(first, last, compute_dtype)  # (n, H, I)
        x = routed[row : row + rows]
        if chunk > 1:
            # One grouped matmul per projection for the whole chunk; transformers' dispatcher falls
            # back to a loop where torch's grouped_mm kernel is unavailable (GPUs before SM80).
            from transformers.integrations.moe import _grouped_mm

            offsets = torch.tensor(counts[first:last], device=x.device, dtype=torch.int32).cumsum(0, dtype=torch.int32)
            h = _grouped_mm(x, w_gate_up.transpose(-2, -1), offs=offsets)
            gate, up = h.chunk(2, dim=-1)
            output[row : row + rows] = _grouped_mm(self.act_fn(gate) * up, w_down.transpose(-2, -1), offs=offsets)
        else:
            h = nn.functional.linear(x, w_gate_up[0])
            gate, up = h.chunk(2, dim=-1)
            output[row : row + rows] = nn.functional.linear(self.act_fn(gate) * up, w_down[0])
        del w_gate_up, w_down
        row += rows
    weighted = output.float() * top_k_weights.reshape(-1)[order].unsqueeze(-1).float()
    # Back to (token, k) order and a plain sum: deterministic on CUDA, unlike index_add_'s atomics,
    # so the same seed gives the same reply.
    unsorted = torch.empty_like(weighted)
    unsorted[order] = weighted
    return unsorted.view(num_tokens, top_k, hidden_dim).sum(dim=1).to(compute_dtype)


def _eager_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaTextExperts

    return DiffusionGemmaTextExperts.forward.__wrapped__(self, hidden_states, top_k_index, top_k_weights)


# Why the fused kernel stopped being used in this process (it failed once: every later call goes
# straight to the stock path instead of failing again).
_fused_failure: dict[str, str] = {}


def _fall_back(kind: str, exc: BaseException) -> None:
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    _fused_failure[kind] = reason
    log.warning("fused NF4 %s kernel failed (%s); using the dequantize-then-matmul path from now on", kind, reason)


def nf4_fused_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                              top_k_weights: torch.Tensor) -> torch.Tensor:
    """Experts forward through the fused Triton kernel (engine/kernels/nf4_moe.py); the stock NF4 path
    where the weights are not NF4 or the kernel failed once (logged)."""
    from engine.kernels import nf4_moe

    gate_up, down = self.gate_up_proj, self.down_proj
    activation = nf4_moe.activation_code(self.act_fn)
    if "experts" not in _fused_failure and isinstance(gate_up, NF4ExpertWeight) and isinstance(down, NF4ExpertWeight) \
            and activation is not None:
        try:
            return nf4_moe.fused_moe(hidden_states, top_k_index, top_k_weights, gate_up, down, activation)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # a Triton compile or launch error: the stock path still works
            _fall_back("experts", exc)
    return nf4_experts_forward(self, hidden_states, top_k_index, top_k_weights)


def register_experts_implementation() -> None:
    """Makes "canvas_nf4" and "canvas_nf4_fused" valid `experts_implementation`s in transformers' ExpertsInterface."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if NF4_EXPERTS_IMPLEMENTATION not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(NF4_EXPERTS_IMPLEMENTATION, nf4_experts_forward)
    if NF4_FUSED_EXPERTS_IMPLEMENTATION not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(NF4_FUSED_EXPERTS_IMPLEMENTATION, nf4_fused_experts_forward)


def fused_kernel_unavailable_reason(model: nn.Module) -> str | None:
    """Why `model`'s NF4 experts cannot use the fused kernel, or None when they can."""
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaTextExperts

    from engine.kernels import nf4_moe

    if nf4_moe.kernel_mode() == "off":
        return "CANVAS_CHAT_NF4_KERNEL=off"
    experts = next((m for m in model.modules() if isinstance(m, DiffusionGemmaTextExperts)
                    and isinstance(m.gate_up_proj, NF4ExpertWeight)), None)
    if experts is None:
        return "the model has no NF4 experts"
    if nf4_moe.activation_code(experts.act_fn) is None:
        return f"no fused epilogue for the activation {type(experts.act_fn).__name__}"
    return nf4_moe.unavailable_reason(experts.gate_up_proj.packed.device)


def use_nf4_experts(model: nn.Module) -> str:
    """Selects the fused experts kernel where it can run, else the stock NF4 path (logging why);
    with CANVAS_CHAT_NF4_KERNEL=all also the fused text linears. Returns the implementation's name."""
    register_experts_implementation()
    reason = fused_kernel_unavailable_reason(model)
    if reason is None:
        from engine.kernels import nf4_moe

        use_fused_path(model, linears=nf4_moe.kernel_mode() == "all")
        log.info("NF4 experts: fused Triton kernel")
        return NF4_FUSED_EXPERTS_IMPLEMENTATION
    # Without a CUDA GPU the stock path is the expected one; on a GPU it costs speed, so say so louder.
    on_gpu = any(b.device.type == "cuda" for b in model.buffers())
    log.log(logging.WARNING if on_gpu and "=off" not in reason else logging.INFO,
            "NF4 experts: dequantize-then-matmul path (fused kernel unavailable: %s)", reason)
    model.set_experts_implementation(NF4_EXPERTS_IMPLEMENTATION)
    return NF4_EXPERTS_IMPLEMENTATION


def use_fused_path(model: nn.Module, *, linears: bool) -> None:
    """The CUDA fast path: fused experts, fused RMSNorms, the decoder's attention without `repeat_kv`
    and (`linears`) fused NF4 text linears. The caller has checked that the kernels can run
    (`fused_kernel_unavailable_reason`)."""
    from engine.attention import use_packed_gqa_attention
    from engine.kernels.norms import use_fused_norms

    register_experts_implementation()
    model.set_experts_implementation(NF4_FUSED_EXPERTS_IMPLEMENTATION)
    use_fused_norms(model)
    use_packed_gqa_attention(model)
    if linears:
        use_fused_nf4_linears(model)


def _fused_linear_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from engine.kernels import nf4_moe

    if "linear" not in _fused_failure:
        try:
            out = nf4_moe.fused_linear(self, x)
            return out if self.bias is None else out + self.bias.to(out.dtype)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            _fall_back("linear", exc)
    return type(self).forward(self, x)


def use_fused_nf4_linears(model: nn.Module) -> int:
    """Routes every NF4 `Linear4bit`'s forward through the fused kernel (the buffers stay bitsandbytes'
    own, so saved copies and state dicts are unchanged). Returns how many modules it routed."""
    bnb, _ = _bnb()
    count = 0
    for module in {id(m): m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}.values():
        if module.weight.quant_type == "nf4" and getattr(module.weight, "quant_state", None) is not None:
            module.forward = types.MethodType(_fused_linear_forward, module)
            count += 1
    return count


# ---------------------------------------------------------------------------- whole models


def alias_groups(model: nn.Module) -> dict[int, list[str]]:
    """Parameter id -> every qualified name under which the model holds it (tied weights share one)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return groups


def set_submodule(model: nn.Module, qualified: str, value: Any) -> None:
    """Sets `value` (module, parameter or buffer holder) at a dotted path, replacing what was there."""
    parent_name, _, attr = qualified.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if attr in parent._parameters and not isinstance(value, nn.Parameter):
        del parent._parameters[attr]
    setattr(parent, attr, value)


def quantize_model(model: nn.Module, quantization: str, device: torch.device | str | None = None, progress=None) -> nn.Module:
    """Quantizes an already materialized model in place (tests and benchmarks; loading uses
    `engine.streaming_loader`, which quantizes tensor by tensor instead)."""
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaTextExperts

    settings = settings_for(quantization)
    groups = alias_groups(model)
    compute_dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    targets = []
    seen: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if is_text_linear(name, module) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            targets.append(("linear", name, module.weight))
        elif isinstance(module, DiffusionGemmaTextExperts):
            for attr in ("gate_up_proj", "down_proj"):
                weight = getattr(module, attr)
                if isinstance(weight, nn.Parameter) and id(weight) not in seen:
                    seen.add(id(weight))
                    targets.append(("experts", f"{name}.{attr}", weight))
    for done, (kind, name, weight) in enumerate(targets, 1):
        target_device = device or weight.device
        holders = groups[id(weight)]
        if kind == "linear":
            new = quantize_linear(weight.data, settings, target_device, compute_dtype)
            for holder in holders:
                set_submodule(model, holder.rpartition(".")[0], new)
        else:
            data = weight.data
            new = NF4ExpertWeight.quantize(lambda a, b: data[a:b], tuple(data.shape), settings, target_device, compute_dtype)
            for holder in holders:
                set_submodule(model, holder, new)
        if progress is not None:
            progress(done, len(targets))
    use_nf4_experts(model)
    return model


def quantized_modules(model: nn.Module) -> dict[str, list[str]]:
    """Names of the text linears and expert tensors, split into quantized / not quantized (for checks)."""
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaTextExperts

    bnb, _ = _bnb()
    report: dict[str, list[str]] = {"quantized": [], "not_quantized": []}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, bnb.nn.Linear4bit):
            report["quantized"].append(name)
        elif is_text_linear(name, module):
            report["not_quantized"].append(name)
        elif isinstance(module, DiffusionGemmaTextExperts):
            for attr in ("gate_up_proj", "down_proj"):
                kind = "quantized" if isinstance(getattr(module, attr), NF4ExpertWeight) else "not_quantized"
                report[kind].append(f"{name}.{attr}")
    return report
