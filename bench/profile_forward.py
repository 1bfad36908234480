"""`python -m bench profile-forward`: what one decoder forward and one denoising step ask of a GPU.

The real architecture (the shipped config: 30 layers, 128 experts top-8, vocabulary 262,144,
canvas 256) at small widths, NF4 path, run on the CPU under a TorchDispatchMode that counts
kernel-launching ops, host syncs and the bytes of every temporary; the bytes a full-size forward
moves are modeled from the real config. Counts, not timings: they hold on any machine.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that launch no kernel: allocation, aliasing, metadata.
_NO_KERNEL = {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::detach", "aten::alias", "aten::lift_fresh",
    "aten::_local_scalar_dense", "aten::sym_size", "aten::sym_stride", "aten::sym_numel", "aten::set_",
    "aten::resize_", "aten::_unsafe_view",
}
# Ops whose output size (or value) the host must read back from the device before going on.
_DATA_DEPENDENT = {
    "aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::equal", "aten::is_nonzero", "aten::nonzero_static",
}
# Python-level reads of device data (each is a device-to-host copy the host waits for).
_HOST_READS = {
    torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
    torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
}


class OpCensus(TorchDispatchMode):
    """Counts non-view aten ops, host syncs and the bytes of every tensor the ops allocate."""

    def __init__(self, run_kernels: bool = True) -> None:
        super().__init__()
        self.run_kernels = run_kernels
        self.ops: Counter[str] = Counter()
        self.host_syncs: Counter[str] = Counter()
        self.temp_bytes = 0
        self.largest_temps: Counter[str] = Counter()
        self.in_host_read = 0
        self.paused = 0  # inside a Triton launch (under TRITON_INTERPRET=1 it runs torch ops on the CPU)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        name = func._schema.name
        if name.startswith(_OWN_KERNELS) and not self.run_kernels:
            self.ops[name] += 1  # one Triton launch, counted without running it
            return _without_running(name, func, args, kwargs)
        out = func(*args, **kwargs)
        if name == "aten::_local_scalar_dense":
            if not self.in_host_read:
                self.host_syncs["item (internal)"] += 1
            return out
        if name == "aten::lift_fresh":  # torch.tensor(python data) inside the forward: a host-to-device copy
            self.host_syncs["torch.tensor(host data)"] += 1
            return out
        if name in _DATA_DEPENDENT or (name == "aten::repeat_interleave" and kwargs.get("output_size") is None
                                        and len(args) == 1):
            self.host_syncs[name] += 1
        if name in ("aten::index", "aten::index_put", "aten::index_put_") and _has_bool_index(args):
            self.host_syncs[name + " (bool mask)"] += 1
        if func.is_view or name in _NO_KERNEL:
            return out
        self.ops[name] += 1
        for tensor in _tensors(out):
            if name.endswith("_") and args and tensor is args[0]:
                continue  # in place: no new memory
            size = tensor.numel() * tensor.element_size()
            self.temp_bytes += size
            self.largest_temps[f"{name} {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"] += size
        return out


# The engine's Triton kernels, registered as torch custom ops (engine/kernels): one launch each.
_OWN_KERNELS = ("canvas::",)


def _without_running(name: str, func, args, kwargs):
    """What a custom kernel's caller sees, without running the kernel (no GPU, and Triton's CPU
    interpreter takes tens of minutes at the real structure): a norm gives torch's own result,
    GEMMs and the expert sort leave zeros in the buffers they write. Nothing here is counted."""
    if name == "canvas::rms_norm":
        x, weight, eps, with_scale = args
        y = x.float() * torch.pow(x.float().pow(2).mean(-1, keepdim=True) + eps, -0.5)
        return (y * weight.float() if with_scale else y).to(x.dtype)
    for index, argument in enumerate(func._schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            args[index].zero_()
    return None


class HostReads(TorchFunctionMode):
    """Counts Python-level reads of tensor data (`.tolist()`, `.item()`, `.cpu()`, `bool(t)`...)."""

    def __init__(self, census: OpCensus) -> None:
        super().__init__()
        self.census = census

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS and not self.census.paused:
            self.census.host_syncs[f"Tensor.{func.__name__}"] += 1
            self.census.in_host_read += 1
            try:
                return func(*args, **kwargs)
            finally:
                self.census.in_host_read -= 1
        return func(*args, **kwargs)


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else None
    return isinstance(indices, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices
    )


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


@contextlib.contextmanager
def census(run_kernels: bool = True):
    counts = OpCensus(run_kernels)
    with HostReads(counts), counts:
        yield counts


class ExpertTemporaries:
    """Elements of expert weights written out dense (bf16 at 2 bytes each) by NF4 dequantization."""

    def __init__(self) -> None:
        self.elements = 0
        self.calls = 0

    @contextlib.contextmanager
    def watching(self):
        from engine.quantization import NF4ExpertWeight

        original = NF4ExpertWeight.dequantize

        def dequantize(weight, *args, **kwargs):
            out = original(weight, *args, **kwargs)
            self.elements += out.numel()
            self.calls += 1
            return out

        NF4ExpertWeight.dequantize = dequantize
        try:
            yield self
        finally:
            NF4ExpertWeight.dequantize = original


# ---------------------------------------------------------------------------- the model


def build_model(*, hidden_size: int, vocab_size: int | None, canvas_length: int | None, experts: str,
                num_experts: int | None = None, top_k: int | None = None, dtype: torch.dtype = torch.float32):
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    from engine.quantization import quantize_model
    from engine.real_config import REAL_MODEL_ID, load_config_dict, scaled_config_dict

    real = load_config_dict(REAL_MODEL_ID)
    scaled = scaled_config_dict(real, hidden_size=hidden_size, head_dim=16, num_experts=num_experts,
                                top_k_experts=top_k, vocab_size=vocab_size, canvas_length=canvas_length)
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(DiffusionGemmaConfig.from_dict(scaled)).eval().to(dtype)
    model.model.encoder.vision_tower = None
    model.model.encoder.embed_vision = None
    quantize_model(model, "nf4")
    for module in model.modules():
        # bitsandbytes' CPU-only bf16 repacking of Linear4bit (which refuses the small widths): not a GPU's path
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    from engine.kernels import nf4_moe
    from engine.quantization import NF4_FUSED_EXPERTS_IMPLEMENTATION, use_fused_path

    if experts not in ALL_EXPERTS_FUNCTIONS:
        raise SystemExit(f"no experts implementation named {experts!r}; registered: {', '.join(ALL_EXPERTS_FUNCTIONS)}")
    if experts == NF4_FUSED_EXPERTS_IMPLEMENTATION:
        # What use_nf4_experts installs on a CUDA GPU (it keeps the stock path on this CPU).
        use_fused_path(model, linears=nf4_moe.kernel_mode() == "all")
    else:
        model.set_experts_implementation(experts)
    return model, real


def expert_full_size_elements(real: dict[str, Any]) -> int:
    """Elements of one expert's gate_up and down projections at the real widths."""
    text = real["text_config"]
    return 3 * text["hidden_size"] * text["moe_intermediate_size"]


def modeled_full_size_bytes(real: dict[str, Any], expert_dense_elements_per_forward_full: int,
                            vocab_temp_bytes: int) -> dict[str, int]:
    """Bytes one full-size decoder forward moves through GPU memory, by part (a floor: each
    weight read once, each temporary written once and read once)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    config = DiffusionGemmaConfig.from_dict(real)
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    nf4_bytes_per_param = 0.5625  # 4 bits + an fp32 absmax per 64
    experts = linears = 0
    for name, param in model.model.decoder.named_parameters():
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            experts += param.numel()
        elif param.dim() == 2 and "embed_tokens" not in name and "router" not in name:
            linears += param.numel()
    text = real["text_config"]
    lm_head = text["vocab_size"] * text["hidden_size"] * 2  # tied bf16 embedding, read whole by lm_head
    return {
        "nf4_expert_weights": int(experts * nf4_bytes_per_param),
        "nf4_text_linears": int(linears * nf4_bytes_per_param),
        "lm_head_bf16": lm_head,
        "expert_bf16_temporaries_write_and_read": 2 * 2 * expert_dense_elements_per_forward_full,
        "vocab_sized_temporaries_write_and_read": 2 * vocab_temp_bytes,
    }


# ---------------------------------------------------------------------------- profiling


def _prompt_cache(model, prompt_tokens: int):
    from engine.generation import new_generation_cache

    ids = torch.randint(3, model.config.text_config.vocab_size, (1, prompt_tokens))
    cache = new_generation_cache(model, prompt_tokens + model.config.canvas_length)
    with torch.no_grad():
        model.model.encoder(input_ids=ids, past_key_values=cache, use_cache=True)
    return ids, cache


def profile(*, hidden_size: int = 64, vocab_size: int | None = None, canvas_length: int | None = None,
            prompt_tokens: int = 64, experts: str = "canvas_nf4", step: str = "engine",
            num_experts: int | None = None, top_k: int | None = None, dtype: str = "float32",
            run_kernels: bool = False) -> dict[str, Any]:
    """Counts for one decoder forward and one denoising step (`step`: "engine" is
    `engine.generation.denoise_step` plus its draft copy; "stock" is transformers' `_denoising_step`
    plus what generate() and the pre-issue-10 engine read back each step). The engine's Triton
    kernels count one op per launch; `run_kernels` runs them too (on a CPU: TRITON_INTERPRET=1)."""
    # The GPU's chunking of the NF4 experts path (8 experts dequantized at a time), not the CPU's.
    os.environ.setdefault("CANVAS_CHAT_DEQUANT_CHUNK", "8")
    model, real = build_model(hidden_size=hidden_size, vocab_size=vocab_size, canvas_length=canvas_length,
                              experts=experts, num_experts=num_experts, top_k=top_k, dtype=getattr(torch, dtype))
    canvas = model.config.canvas_length
    vocab = model.config.text_config.vocab_size
    with census(run_kernels):  # the encoder runs the fused norms too
        input_ids, cache = _prompt_cache(model, prompt_tokens)
    positions = torch.arange(prompt_tokens, prompt_tokens + canvas, dtype=torch.int32).unsqueeze(0)
    canvas_ids = torch.randint(0, vocab, (1, canvas))
    with torch.no_grad(), census(run_kernels):
        warm = model(decoder_input_ids=canvas_ids, past_key_values=cache, decoder_position_ids=positions).logits

    def forward():
        return model(decoder_input_ids=canvas_ids, self_conditioning_logits=warm, past_key_values=cache,
                     decoder_position_ids=positions).logits

    experts_seen = ExpertTemporaries()
    with torch.no_grad(), experts_seen.watching(), census(run_kernels) as per_forward:
        forward()
    dense_per_forward = experts_seen.elements
    vocab_bytes = sum(size for key, size in per_forward.largest_temps.items() if f", {vocab})" in key)

    run_step = (_engine_step if step == "engine" else _stock_step)(model, input_ids, cache, positions, canvas_ids, warm)
    with torch.no_grad(), census(run_kernels) as per_step:
        details = run_step()

    _check_fused_path_held(experts)
    full_elements = dense_per_forward // max(1, _expert_elements(model)) * expert_full_size_elements(real)
    real_text = real["text_config"]
    vocab_bytes_full = vocab_bytes * (real["canvas_length"] * real_text["vocab_size"]) // (canvas * vocab)
    modeled = modeled_full_size_bytes(real, full_elements, vocab_bytes_full)
    return {
        "what": "one decoder forward and one denoising step of the real architecture at small widths, NF4 path",
        "experts_implementation": experts,
        "dtype": dtype,
        "nf4_kernel_mode": nf4_moe_mode(),
        "triton_kernels": ("run" if run_kernels else "counted one op per launch, not run (their outputs: torch's "
                           "own for the norms, zeros for the GEMMs)"),
        "step_path": step,
        "shape": {"hidden_size": hidden_size, "canvas": canvas, "vocab": vocab, "prompt_tokens": prompt_tokens,
                  "layers": model.config.text_config.num_hidden_layers,
                  "experts": model.config.text_config.num_experts, "top_k": model.config.text_config.top_k_experts},
        "ops_per_forward": sum(per_forward.ops.values()),
        "host_syncs_per_forward": sum(per_forward.host_syncs.values()),
        "expert_bf16_temp_bytes": 2 * dense_per_forward,
        "expert_bf16_temp_bytes_full_size": 2 * full_elements,
        "expert_dequantize_calls_per_forward": experts_seen.calls,
        "triton_launches_per_forward": sum(v for k, v in per_forward.ops.items() if k.startswith(_OWN_KERNELS)),
        "triton_launches_per_forward_by_kernel": {k: v for k, v in per_forward.ops.items() if k.startswith(_OWN_KERNELS)},
        "temp_bytes_per_forward": per_forward.temp_bytes,
        "ops_per_step": sum(per_step.ops.values()),
        "host_syncs_per_step": sum(per_step.host_syncs.values()),
        # What the step adds to its decoder forward (sampler, stopping rule, draft): 0 on the engine path.
        "host_syncs_per_step_outside_forward": sum(per_step.host_syncs.values()) - sum(per_forward.host_syncs.values()),
        "draft_copies_per_step": details["draft_copies"],
        "temp_bytes_per_step": per_step.temp_bytes,
        "modeled_bytes_per_forward_full_size": {**modeled, "total": sum(modeled.values())},
        "host_syncs_per_forward_by_kind": dict(per_forward.host_syncs.most_common()),
        "host_syncs_per_step_by_kind": dict(per_step.host_syncs.most_common()),
        "top_ops_per_forward": dict(per_forward.ops.most_common(25)),
        "largest_temporaries_per_forward": dict(per_forward.largest_temps.most_common(8)),
    }


def _check_fused_path_held(experts: str) -> None:
    """A fused kernel that failed falls back to torch's ops for good: then the count is not of the
    fused path, and saying so beats reporting it as if it were."""
    from engine import quantization
    from engine.kernels import norms

    failures = {**quantization._fused_failure, **norms._failure}
    if experts == quantization.NF4_FUSED_EXPERTS_IMPLEMENTATION and failures:
        raise SystemExit(f"a fused kernel fell back during the count, which is then not of the fused path: {failures}")


def nf4_moe_mode() -> str:
    from engine.kernels import nf4_moe

    return nf4_moe.kernel_mode()


def _expert_elements(model) -> int:
    text = model.config.text_config
    return 3 * text.hidden_size * text.moe_intermediate_size


def _step_inputs(model):
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    config, _ = model._prepare_generation_config(None, sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.1),
                                                 max_denoising_steps=16, t_min=0.4, t_max=0.8,
                                                 stability_threshold=1, confidence_threshold=0.005)
    return config


def _engine_step(model, input_ids, cache, positions, canvas_ids, warm):
    """`engine.generation.denoise_step` and its one draft copy; what is made once per generation
    (step constants, the pinned buffer) is made before the count starts."""
    from engine.generation import CanvasState, DraftChannel, StepConstants, denoise_step

    config = _step_inputs(model)
    constants = StepConstants.build(canvas_ids.device, {1, 106}, config.max_denoising_steps)
    processors = model._prepare_logits_processor(config, None)
    channel = DraftChannel(canvas_ids.device, 3 * canvas_ids.shape[1] + 2)

    def step() -> dict[str, int]:
        state = CanvasState(canvas_ids, canvas_ids, warm, None)
        state, summary = denoise_step(
            model, state, step=config.max_denoising_steps, input_ids=input_ids, position_ids=positions,
            mask_mapping={"full_attention": None, "sliding_attention": None}, past_key_values=cache,
            entropy_bound=0.1, logits_processor=processors,
            stopping=(config.stability_threshold, config.confidence_threshold), constants=constants,
        )
        # The step's one copy (pinned and non-blocking on a GPU) is counted apart, not as a host
        # sync; the host reads it after the step, on the draft's way to the GUI.
        channel.host.copy_(summary, non_blocking=True)
        return {"draft_copies": 1}

    return step


def _stock_step(model, input_ids, cache, positions, canvas_ids, warm):
    """transformers' `_denoising_step`, then what its generate() loop and the engine's streamer
    before issue 10 read back per step: `argmax.cpu()`, `torch.all(finished)`, the accepted mask
    and the entropy buckets (edges made on the CPU: the crash) as lists."""
    config = _step_inputs(model)
    sampler = model._prepare_sampler(config)
    processors = model._prepare_logits_processor(config, None)
    stopping = model._prepare_diffusion_stopping_criteria(config)

    def step() -> dict[str, int]:
        finished = torch.zeros(1, dtype=torch.bool)
        _, argmax, logits, finished = model._denoising_step(
            decoder_forward=model.forward, current_canvas=canvas_ids, argmax_canvas=canvas_ids, input_ids=input_ids,
            decoder_position_ids=positions, self_conditioning_logits=warm,
            mask_mapping={"full_attention": None, "sliding_attention": None}, past_key_values=cache,
            finished_denoising=finished, cur_step=config.max_denoising_steps, sampler=sampler,
            logits_processor=processors, diffusion_stopping_criteria=stopping,
        )
        argmax.cpu()  # generate(): streamer.put_draft(argmax_canvas.cpu()), then .tolist() in the streamer
        # The old ProbingSampler recomputed the entropy (validated) inside accept_canvas.
        entropy = torch.distributions.Categorical(logits=logits.float()).entropy()
        sampler.accepted_token_mask[0].tolist()
        torch.bucketize(entropy[0], torch.tensor((0.05, 0.5, 2.0), dtype=entropy.dtype)).tolist()
        bool(torch.all(finished))  # generate(): early exit
        return {"draft_copies": 0}

    return step


def render(result: dict[str, Any]) -> str:
    shape = result["shape"]
    lines = [
        f"profile-forward: {shape['layers']} layers, {shape['experts']} experts top-{shape['top_k']}, "
        f"canvas {shape['canvas']}, vocab {shape['vocab']:,}, hidden {shape['hidden_size']} (real: 2816); "
        f"experts '{result['experts_implementation']}', step path '{result['step_path']}'",
        f"per decoder forward: {result['ops_per_forward']:,} kernel-launching ops, "
        f"{result['host_syncs_per_forward']} host syncs, {result['expert_dequantize_calls_per_forward']} expert "
        f"dequantizations, {result['temp_bytes_per_forward'] / 1e6:,.1f} MB of temporaries",
        f"  expert bf16 temporaries: {result['expert_bf16_temp_bytes'] / 1e6:,.2f} MB here, "
        f"{result['expert_bf16_temp_bytes_full_size'] / 1e9:,.1f} GB at full size",
        f"per denoising step: {result['ops_per_step']:,} ops, {result['host_syncs_per_step']} host syncs "
        f"({result['host_syncs_per_step_outside_forward']} outside the forward), "
        f"{result['draft_copies_per_step']} draft copy, {result['temp_bytes_per_step'] / 1e6:,.1f} MB of temporaries",
        "modeled bytes per full-size forward (GB):",
    ]
    for key, value in result["modeled_bytes_per_forward_full_size"].items():
        lines.append(f"  {key:42s} {value / 1e9:8.2f}")
    lines.append("host syncs per forward: " + (", ".join(f"{k} x{v}" for k, v in result["host_syncs_per_forward_by_kind"].items()) or "none"))
    lines.append("host syncs per step: " + (", ".join(f"{k} x{v}" for k, v in result["host_syncs_per_step_by_kind"].items()) or "none"))
    return "\n".join(lines)
