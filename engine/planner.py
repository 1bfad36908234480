"""Memory planner: will a DiffusionGemma config fit a GPU with a given quantization and context?

Pure arithmetic on the config dict (standard library only: `python -m engine plan` answers in well
under a second, offline, without torch). The estimates and their assumptions are in
docs/quantization.md; the parameter counts match a model built on the meta device (tested).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

GIB = 1024**3
MIB = 1024**2

QUANTIZATIONS = ("nf4", "nf4-double", "bf16", "bnb-stock")
# Aliases used by the protocol's LoadModel.quantization.
_ALIASES = {"none": "bf16", "auto": "nf4", "bfloat16": "bf16", "nf4-dq": "nf4-double"}

NF4_BLOCKSIZE = 64  # bitsandbytes' default for 4-bit weights
NESTED_BLOCKSIZE = 256  # double quantization: absmax values quantized to 8 bit in blocks of 256
# Bytes per weight: 4 bits + one fp32 absmax per 64 weights (+ for double quant: one 8-bit absmax per
# 64 weights and one fp32 per 256 of those). Biases: none in this model.
BYTES_PER_PARAM = {
    "bf16": 2.0,
    "nf4": 0.5 + 4 / NF4_BLOCKSIZE,
    "nf4-double": 0.5 + 1 / NF4_BLOCKSIZE + 4 / (NF4_BLOCKSIZE * NESTED_BLOCKSIZE),
}

# Runtime assumptions (see docs/quantization.md, "Memory planner").
CUDA_CONTEXT_BYTES = int(0.75 * GIB)  # CUDA context, cuBLAS workspace, kernels of torch + bitsandbytes
FRAGMENTATION = 0.05  # caching-allocator slack on everything that is allocated and freed per step
VOCAB_BUFFERS_PER_STEP = 7  # fp32 (canvas x vocab) tensors alive at once in one denoising step
DEQUANT_CHUNK_EXPERTS = 8  # experts dequantized at once by the NF4 experts forward
MIN_USEFUL_CONTEXT = 2048  # below this a chat app is not worth offering
CONTEXT_STEP = 1024


def normalize_quantization(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {name!r}: choose one of {', '.join(QUANTIZATIONS)}")
    return key


# ---------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class Architecture:
    """Parameter counts by kind (unique tensors: encoder and decoder share their text weights)."""

    hidden_size: int
    num_layers: int
    vocab_size: int
    canvas_length: int
    sliding_window: int
    num_experts: int
    top_k_experts: int
    moe_intermediate_size: int
    intermediate_size: int
    num_attention_heads: int
    sliding_kv_bytes_per_token: int  # K and V of all sliding layers, bf16
    full_kv_bytes_per_token: int  # K and V of all full-attention layers, bf16
    embedding: int  # embed_tokens (tied with lm_head)
    text_linear: int  # attention, dense MLP and self-conditioning nn.Linear weights
    experts: int  # 3D expert weights
    router: int  # router projections (kept bf16)
    norms_and_scales: int
    vision_linear: int
    vision_other: int
    layers_quantized: int  # modules our NF4 loader quantizes (linears + experts tensors)
    vision_hidden_size: int = 0
    vision_intermediate_size: int = 0
    vision_attention_heads: int = 0
    image_patches: int = 0  # patches of one image at the most soft tokens (before pooling)

    @property
    def text_total(self) -> int:
        return self.embedding + self.text_linear + self.experts + self.router + self.norms_and_scales

    @property
    def vision_total(self) -> int:
        return self.vision_linear + self.vision_other

    @property
    def total(self) -> int:
        return self.text_total + self.vision_total

    @property
    def active_per_token(self) -> int:
        expert_share = self.experts * self.top_k_experts // max(self.num_experts, 1)
        return self.text_total - self.experts + expert_share


def _get(mapping: dict[str, Any], key: str, default: Any) -> Any:
    value = mapping.get(key)
    return default if value is None else value


def architecture_from_config(config: dict[str, Any]) -> Architecture:
    """Counts parameters of a DiffusionGemma config dict the way the modeling code builds them."""
    text = config.get("text_config") or {}
    if isinstance(text, dict) is False:
        raise ValueError("config has no text_config")
    hidden = int(_get(text, "hidden_size", 2304))
    layers = int(_get(text, "num_hidden_layers", 30))
    vocab = int(_get(text, "vocab_size", 262_144))
    heads = int(_get(text, "num_attention_heads", 8))
    kv_heads = int(_get(text, "num_key_value_heads", 4))
    head_dim = int(_get(text, "head_dim", 256))
    global_head_dim = int(_get(text, "global_head_dim", 512))
    global_kv_heads = text.get("num_global_key_value_heads")
    # DiffusionGemmaTextConfig overrides the full layers' KV heads with the global count unless the
    # config sets `attention_k_eq_v` to false (the gate falls back to True); full layers never have a
    # v_proj (K = V).
    if global_kv_heads is None or text.get("attention_k_eq_v", True) is False:
        global_kv_heads = kv_heads
    global_kv_heads = int(global_kv_heads)
    intermediate = int(_get(text, "intermediate_size", 9216))
    experts_n = int(_get(text, "num_experts", 0))
    top_k = int(_get(text, "top_k_experts", 0))
    moe_inter = int(_get(text, "moe_intermediate_size", 0))
    sliding_window = int(_get(text, "sliding_window", 512))
    layer_types = list(text.get("layer_types") or [
        "sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(layers)
    ])
    layer_types[-1] = "full_attention"
    bias = bool(text.get("attention_bias", False))
    # A saved config carries the full layers' overrides as per_layer_config {"5": {"head_dim": 512, ...}};
    # a hand-written one (like the hub's) as global_head_dim / num_global_key_value_heads.
    per_layer = {int(k): v for k, v in (text.get("per_layer_config") or {}).items() if str(k).isdigit()}

    linear = 0
    norms = hidden  # final norm
    router = 0
    experts = 0
    quantized_modules = 0
    sliding_kv = 0
    full_kv = 0
    for index, layer_type in enumerate(layer_types[:layers]):
        sliding = layer_type == "sliding_attention"
        if per_layer:
            override = per_layer.get(index, {})
            hd = int(override.get("head_dim", head_dim))
            kvh = int(override.get("num_key_value_heads", kv_heads))
        else:
            hd = head_dim if sliding else global_head_dim
            kvh = kv_heads if sliding else global_kv_heads
        q = hidden * heads * hd
        k = hidden * kvh * hd
        v = hidden * kvh * hd if sliding else 0
        o = heads * hd * hidden
        linear += q + k + v + o
        if bias:
            linear += heads * hd + kvh * hd * (2 if sliding else 1) + hidden
        linear += 3 * hidden * intermediate
        norms += 2 * hd + 7 * hidden  # q/k norms; input, post-attn, pre/post-ff, post-ff 1/2, pre-ff 2
        router += experts_n * hidden
        norms += hidden + experts_n  # router.scale, router.per_expert_scale
        experts += experts_n * 2 * moe_inter * hidden + experts_n * hidden * moe_inter
        quantized_modules += (7 if sliding else 6) + 2
        if sliding:
            sliding_kv += 2 * kvh * hd * 2
        else:
            full_kv += 2 * kvh * hd * 2  # K and V are stored separately even though V comes from k_proj
    # Self-conditioning gated MLP (decoder only) and its pre-norm.
    linear += 3 * hidden * intermediate
    norms += hidden
    quantized_modules += 3

    vision_linear = vision_other = 0
    vh = vi = vheads = patches = 0
    vision = config.get("vision_config")
    if isinstance(vision, dict):
        vh = int(_get(vision, "hidden_size", 768))
        vi = int(_get(vision, "intermediate_size", 3072))
        vl = int(_get(vision, "num_hidden_layers", 16))
        vheads = int(_get(vision, "num_attention_heads", 12))
        vkv = int(_get(vision, "num_key_value_heads", 12))
        vhd = int(_get(vision, "head_dim", 64))
        patch = int(_get(vision, "patch_size", 16))
        positions = int(_get(vision, "position_embedding_size", 10 * 1024))
        per_layer = vh * vheads * vhd + 2 * vh * vkv * vhd + vheads * vhd * vh + 3 * vh * vi
        vision_linear = vl * per_layer + 3 * patch * patch * vh + vh * hidden  # + embed_vision projection
        vision_other = vl * (4 * vh + 2 * vhd) + 2 * positions * vh  # (standardize's scale/bias are buffers)
        pooling = int(_get(vision, "pooling_kernel_size", 3))
        patches = int(_get(config, "vision_soft_tokens_per_image", 280)) * pooling * pooling
    return Architecture(
        hidden_size=hidden,
        num_layers=layers,
        vocab_size=vocab,
        canvas_length=int(_get(config, "canvas_length", 256)),
        sliding_window=sliding_window,
        num_experts=experts_n,
        top_k_experts=top_k,
        moe_intermediate_size=moe_inter,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        sliding_kv_bytes_per_token=sliding_kv,
        full_kv_bytes_per_token=full_kv,
        embedding=vocab * hidden,
        text_linear=linear,
        experts=experts,
        router=router,
        norms_and_scales=norms,
        vision_linear=vision_linear,
        vision_other=vision_other,
        layers_quantized=quantized_modules,
        vision_hidden_size=vh,
        vision_intermediate_size=vi,
        vision_attention_heads=vheads,
        image_patches=patches,
    )


# ---------------------------------------------------------------------------- estimates


def weights_bytes(arch: Architecture, quantization: str, vision: bool = False) -> dict[str, int]:
    """Bytes of weights on the GPU by kind, for one quantization choice."""
    quantization = normalize_quantization(quantization)
    bf16 = BYTES_PER_PARAM["bf16"]
    if quantization == "bnb-stock":
        # transformers' BitsAndBytesConfig(load_in_4bit=True): only untied nn.Linear modules are
        # converted (vision tower, self-conditioning); the 3D experts and every text weight tied
        # between encoder and decoder stay bf16, and the vision tower is always loaded.
        self_conditioning = 3 * arch.hidden_size * arch.intermediate_size
        four_bit = BYTES_PER_PARAM["nf4"]
        return {
            "embedding": int(arch.embedding * bf16),
            "text_linear": int((arch.text_linear - self_conditioning) * bf16 + self_conditioning * four_bit),
            "experts": int(arch.experts * bf16),
            "router_norms": int((arch.router + arch.norms_and_scales) * bf16),
            "vision": int(arch.vision_linear * four_bit + arch.vision_other * bf16),
        }
    per_param = BYTES_PER_PARAM[quantization]
    return {
        "embedding": int(arch.embedding * bf16),
        "text_linear": int(arch.text_linear * per_param),
        "experts": int(arch.experts * per_param),
        "router_norms": int((arch.router + arch.norms_and_scales) * bf16),
        "vision": int(arch.vision_total * bf16) if vision else 0,
    }


def kv_cache_bytes(arch: Architecture, context_tokens: int) -> int:
    """KV cache for `context_tokens` tokens: sliding layers keep at most window - 1 tokens."""
    sliding_tokens = min(context_tokens, max(arch.sliding_window - 1, 0))
    return sliding_tokens * arch.sliding_kv_bytes_per_token + context_tokens * arch.full_kv_bytes_per_token


def decoder_step_bytes(arch: Architecture, canvas: int, quantization: str) -> int:
    """Peak transient memory of one denoising step over a canvas (batch 1)."""
    # Vocab-sized fp32 tensors: logits (bf16 then fp32), soft-capping temporaries, the previous step's
    # logits kept for self-conditioning, its softmax, the sampler's scaled logits/probs/entropy.
    vocab = VOCAB_BUFFERS_PER_STEP * canvas * arch.vocab_size * 4
    # Per-layer hidden activations (bf16), the routed copies and intermediate of the experts,
    # attention over cache + canvas.
    routed = canvas * max(arch.top_k_experts, 1) * (2 * arch.hidden_size + 3 * arch.moe_intermediate_size) * 2
    hidden = canvas * (16 * arch.hidden_size + 3 * arch.intermediate_size) * 2
    attention = arch.num_attention_heads * canvas * (arch.sliding_window + canvas) * 4
    dequant = 0
    if quantization in ("nf4", "nf4-double"):
        per_expert = 3 * arch.moe_intermediate_size * arch.hidden_size * 2
        dequant = min(DEQUANT_CHUNK_EXPERTS, arch.num_experts) * per_expert
    return vocab + routed + hidden + attention + dequant


def encoder_prefill_bytes(arch: Architecture, prompt_tokens: int, quantization: str) -> int:
    """Peak transient memory of encoding `prompt_tokens` uncached tokens in one pass (stock generate())."""
    per_token = (
        (16 * arch.hidden_size + 3 * arch.intermediate_size) * 2
        + max(arch.top_k_experts, 1) * (2 * arch.hidden_size + 3 * arch.moe_intermediate_size) * 2
        + max(arch.top_k_experts, 1) * (arch.num_experts + 1) * 8  # routing one-hot (int64)
    )
    # SDPA with a materialized boolean sliding-window mask (prompt x prompt).
    mask = prompt_tokens * prompt_tokens
    dequant = 0
    if quantization in ("nf4", "nf4-double"):
        dequant = min(DEQUANT_CHUNK_EXPERTS, arch.num_experts) * 3 * arch.moe_intermediate_size * arch.hidden_size * 2
    return prompt_tokens * per_token + mask + dequant


def image_encoding_bytes(arch: Architecture) -> int:
    """Peak transient memory of the vision tower over one image at its most patches (bf16 hidden
    states, fp32 attention scores); it is freed before the text prefill starts."""
    patches = arch.image_patches
    hidden = patches * (16 * arch.vision_hidden_size + 3 * arch.vision_intermediate_size) * 2
    attention = arch.vision_attention_heads * patches * patches * 4
    return hidden + attention


def activation_bytes(arch: Architecture, context_tokens: int, canvas: int, quantization: str, vision: bool = False) -> int:
    return max(
        decoder_step_bytes(arch, canvas, quantization),
        encoder_prefill_bytes(arch, context_tokens, quantization),
        image_encoding_bytes(arch) if vision else 0,
    )


# ---------------------------------------------------------------------------- plan


Verdict = Literal["fits", "fits_shorter_context", "does_not_fit"]


@dataclass(frozen=True)
class Plan:
    """One memory estimate and its verdict (all sizes in bytes)."""

    model: str
    quantization: str
    vision: bool
    context_tokens: int
    canvas_length: int
    gpu_free_bytes: int
    weights_bytes: int
    kv_cache_bytes: int
    activations_bytes: int
    overhead_bytes: int
    total_bytes: int
    verdict: Verdict
    max_context_tokens: int  # the longest context that fits (0 when nothing fits)
    reason: str
    parameters: int
    weights_breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.verdict == "fits"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("gpu_free_bytes", "weights_bytes", "kv_cache_bytes", "activations_bytes", "overhead_bytes", "total_bytes"):
            data[key.replace("_bytes", "_gib")] = round(data[key] / GIB, 2)
            data[key.replace("_bytes", "_gb")] = round(data[key] / 1e9, 2)
        data["fits"] = self.fits
        return data


def _needed(arch: Architecture, quantization: str, vision: bool, context: int, canvas: int) -> tuple[int, int, int, int, dict[str, int]]:
    breakdown = weights_bytes(arch, quantization, vision)
    weights = sum(breakdown.values())
    kv = kv_cache_bytes(arch, context)
    activations = activation_bytes(arch, context, canvas, quantization, vision)
    overhead = CUDA_CONTEXT_BYTES + int(FRAGMENTATION * (kv + activations + weights))
    return weights, kv, activations, overhead, breakdown


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def plan(
    config: dict[str, Any],
    quantization: str,
    context: int,
    gpu_free_bytes: int,
    canvas_length: int | None = None,
    *,
    vision: bool = False,
    model: str = "",
) -> Plan:
    """Estimates the GPU memory a model needs and says whether it fits `gpu_free_bytes`.

    `context` counts every token the conversation may hold (prompt + replies); `canvas_length`
    defaults to the config's. The verdict is "fits", "fits_shorter_context" (then
    `max_context_tokens` is the longest that fits, rounded down to 1,024) or "does_not_fit".
    """
    quantization = normalize_quantization(quantization)
    if context <= 0:
        raise ValueError(f"context must be positive (got {context})")
    if gpu_free_bytes <= 0:
        raise ValueError(f"GPU memory must be positive (got {gpu_free_bytes})")
    arch = architecture_from_config(config)
    canvas = int(canvas_length or arch.canvas_length)
    vision = vision or quantization == "bnb-stock"
    weights, kv, activations, overhead, breakdown = _needed(arch, quantization, vision, context, canvas)
    total = weights + kv + activations + overhead
    parameters = arch.total if vision else arch.text_total

    def fits_at(tokens: int) -> bool:
        w, k, a, o, _ = _needed(arch, quantization, vision, tokens, canvas)
        return w + k + a + o <= gpu_free_bytes

    label = {
        "nf4": "NF4 (4-bit, experts included)",
        "nf4-double": "NF4 with double quantization",
        "bf16": "bf16 (unquantized)",
        "bnb-stock": "transformers' stock 4-bit path (experts and tied text weights left in bf16)",
    }[quantization]
    if total <= gpu_free_bytes:
        verdict: Verdict = "fits"
        max_context = context
        reason = (
            f"{label}: {_gib(weights)} of weights + {_gib(kv)} KV cache for {context:,} tokens + "
            f"{_gib(activations)} activations + {_gib(overhead)} overhead = {_gib(total)}, "
            f"within {_gib(gpu_free_bytes)} ({_gib(gpu_free_bytes - total)} to spare)."
        )
    else:
        floor = min(MIN_USEFUL_CONTEXT, context)
        if fits_at(floor):
            lo, hi = floor, context  # fits at lo, not at hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if fits_at(mid):
                    lo = mid
                else:
                    hi = mid
            max_context = max(floor, lo // CONTEXT_STEP * CONTEXT_STEP) if lo >= CONTEXT_STEP else lo
            verdict = "fits_shorter_context"
            reason = (
                f"{label}: {_gib(total)} needed for {context:,} tokens but only {_gib(gpu_free_bytes)} free; "
                f"the weights ({_gib(weights)}) fit, so use a context of at most {max_context:,} tokens "
                f"(the KV cache and the prompt's activations grow with the context)."
            )
        else:
            verdict = "does_not_fit"
            max_context = 0
            minimum = weights + overhead
            if minimum > gpu_free_bytes:
                reason = (
                    f"{label}: the weights alone need {_gib(weights)} (+{_gib(CUDA_CONTEXT_BYTES)} CUDA context), "
                    f"more than the {_gib(gpu_free_bytes)} free on this GPU."
                )
            else:
                reason = (
                    f"{label}: {_gib(weights)} of weights leave too little of the {_gib(gpu_free_bytes)} for the "
                    f"KV cache and the ~{_gib(decoder_step_bytes(arch, canvas, quantization))} a denoising step needs, "
                    f"even with a {floor:,}-token context."
                )
            if quantization in ("bf16", "bnb-stock"):
                nf4_weights = sum(weights_bytes(arch, "nf4", vision=False).values())
                reason += f" NF4 with the experts quantized needs {_gib(nf4_weights)} of weights."
    return Plan(
        model=model,
        quantization=quantization,
        vision=vision,
        context_tokens=context,
        canvas_length=canvas,
        gpu_free_bytes=int(gpu_free_bytes),
        weights_bytes=weights,
        kv_cache_bytes=kv,
        activations_bytes=activations,
        overhead_bytes=overhead,
        total_bytes=total,
        verdict=verdict,
        max_context_tokens=max_context,
        reason=reason,
        parameters=parameters,
        weights_breakdown=breakdown,
    )


# ---------------------------------------------------------------------------- command line

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": GIB, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": MIB, "mb": MIB, "mib": MIB,
          "g": GIB, "gb": GIB, "gib": GIB, "t": 1024 * GIB, "tb": 1024 * GIB, "tib": 1024 * GIB}


def parse_memory(text: str) -> int:
    """'24GB', '24 GiB', '24576MiB', '24' -> bytes. A card sold as "24 GB" has 24 GiB, so GB = GiB here."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a memory size: {text!r} (try 24GB)")
    number, unit = match.groups()
    unit = (unit or "").lower()
    if unit not in _UNITS:
        raise ValueError(f"unknown unit in {text!r} (use MB or GB)")
    return int(float(number) * _UNITS[unit])


def parameter_text(count: int) -> str:
    """'25.81 B', '1.55 M' or '3,072': a tiny model is not '0.00 B'."""
    if count >= 1e9:
        return f"{count / 1e9:.2f} B"
    if count >= 1e6:
        return f"{count / 1e6:.2f} M"
    return f"{count:,}"


DEFAULT_GPU_MEMORY = "24GB"


def _gpu_memory_or_assumed() -> tuple[int, str]:
    """Free memory of this PC's GPU (nvidia-smi, no torch); without one, the 24 GB card the
    26B model is planned for, said out loud."""
    from engine.hardware import pick_gpu
    from engine.machine import query_nvidia_smi

    gpu = pick_gpu(query_nvidia_smi([]))
    free = gpu.get("free_vram_bytes") if gpu else None
    if free:
        return int(free), f"using the {_gib(free)} free on {gpu.get('name') or 'this GPU'} (pass --gpu-memory to plan for another card)"
    return parse_memory(DEFAULT_GPU_MEMORY), (
        f"no NVIDIA GPU found on this PC: assuming a {DEFAULT_GPU_MEMORY[:-2]} GB card; "
        "pass --gpu-memory (e.g. --gpu-memory 16GB) to plan for yours"
    )


def _format_text(p: Plan) -> str:
    verdict = {"fits": "FITS", "fits_shorter_context": f"FITS WITH A SHORTER CONTEXT (≤ {p.max_context_tokens:,} tokens)",
               "does_not_fit": "DOES NOT FIT"}[p.verdict]
    lines = [
        f"model         {p.model}  ({parameter_text(p.parameters)} parameters loaded)",
        f"quantization  {p.quantization}{'  + vision tower' if p.vision else ''}",
        f"context       {p.context_tokens:,} tokens, canvas {p.canvas_length}",
        f"weights       {_gib(p.weights_bytes)}",
        f"KV cache      {_gib(p.kv_cache_bytes)}",
        f"activations   {_gib(p.activations_bytes)}",
        f"overhead      {_gib(p.overhead_bytes)}",
        f"total         {_gib(p.total_bytes)} of {_gib(p.gpu_free_bytes)}",
        f"verdict       {verdict}",
        f"              {p.reason}",
    ]
    return "\n".join(lines)


def cli_main(argv: list[str] | None = None) -> int:
    """`python -m engine plan --model PATH_OR_ID [--gpu-memory 24GB] [--context 8192] [--quantization nf4] [--json]`.

    Exit status 0 when it fits (also with a shorter context), 1 when it does not, 2 on bad input.
    """
    parser = argparse.ArgumentParser(prog="python -m engine plan", description="Will a model fit this GPU?")
    parser.add_argument("--model", required=True, help="model folder or hub id (google/diffusiongemma-26B-A4B-it ships)")
    parser.add_argument("--gpu-memory", help="GPU memory free for the engine, e.g. 24GB (GB = GiB); "
                        "default: this PC's free GPU memory, else 24GB (said in the output)")
    parser.add_argument("--context", type=int, default=8192, help="tokens the conversation may hold")
    parser.add_argument("--canvas", type=int, default=None, help="canvas length (default: the config's)")
    parser.add_argument("--quantization", default="nf4", help="nf4 | nf4-double | bf16 | bnb-stock")
    parser.add_argument("--vision", action="store_true", help="also load the vision tower")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)

    from engine.real_config import ModelConfigNotFound, load_config_dict

    try:
        config = load_config_dict(args.model)
        if args.gpu_memory is None:
            gpu_memory, note = _gpu_memory_or_assumed()
            print(f"plan: {note}", file=sys.stderr)
        else:
            gpu_memory = parse_memory(args.gpu_memory)
        result = plan(
            config,
            args.quantization,
            args.context,
            gpu_memory,
            args.canvas,
            vision=args.vision,
            model=args.model,
        )
    except (ModelConfigNotFound, ValueError) as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(_format_text(result))
    return 0 if result.verdict != "does_not_fit" else 1
