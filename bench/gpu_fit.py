"""Does the full DiffusionGemma 26B-A4B fit and run on this GPU? Random weights, straight into NF4.

    python -m bench.gpu_fit                          # full size on CUDA: NF4, then bf16 if it fits
    python -m bench.gpu_fit --quantization nf4 --dequant-chunk 1,8,32
    python -m bench.gpu_fit --size small --device cpu  # the same code at a tiny size (tested on CPU)

Nothing is downloaded: the architecture comes from the shipped config
(resources/models/diffusiongemma-26B-A4B-it/config.json) and every weight is random, made and
quantized on the device one tensor at a time (the bf16 model never exists whole for NF4). Prints
peak GPU memory, the median time of one decoder forward over a canvas (256 tokens) and of one
encoder forward over a 1k-token prompt. Speed depends on shapes, not values; the figures say
nothing about answer quality.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from typing import Any

SMALL_TEXT = dict(
    vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=64, global_head_dim=128, num_global_key_value_heads=1,
    layer_types=["sliding_attention"] * 3 + ["full_attention"], sliding_window=128, num_experts=16,
    top_k_experts=4, moe_intermediate_size=256, enable_moe_block=True, max_position_embeddings=8192,
)
SMALL_VISION = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, head_dim=8)


def make_config(size: str):
    from transformers import AutoConfig, DiffusionGemmaConfig

    if size == "full":
        from engine.real_config import REAL_MODEL_ID, shipped_model_dir

        return AutoConfig.from_pretrained(str(shipped_model_dir(REAL_MODEL_ID)))
    return DiffusionGemmaConfig(text_config=dict(SMALL_TEXT), vision_config=dict(SMALL_VISION), canvas_length=64)


def build_random(config, device, quantization: str, seed: int = 0):
    """The model with random weights made on `device`, tensor by tensor; NF4 quantized on the device."""
    import torch
    from torch import nn

    from engine import quantization as q
    from engine.streaming_loader import build_meta_model, finish_model, install, plan_targets

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    quantized = quantization in q.QUANTIZED_METHODS
    settings = q.settings_for(quantization) if quantized else None
    torch.manual_seed(seed)
    model = build_meta_model(config, vision=False)
    modules = dict(model.named_modules(remove_duplicate=False))
    seen: set[int] = set()

    def normal(*shape: int):
        return torch.randn(*shape, device=device, dtype=dtype) * 0.02

    for name, target in plan_targets(model, quantize=quantized).items():
        if id(target) in seen:
            continue
        seen.add(id(target))
        owner_name, _, attr = name.rpartition(".")
        meta = getattr(modules[owner_name], attr)
        shape = tuple(meta.shape)
        if target.kind == "linear":
            value = q.quantize_linear(normal(*shape), settings, device, dtype)
        elif target.kind == "experts":
            value = q.NF4ExpertWeight.quantize(lambda a, b: normal(b - a, *shape[1:]), shape, settings, device, dtype)
        elif target.kind == "buffer":
            if attr in modules[owner_name]._non_persistent_buffers_set:
                continue  # recomputed by finish_model
            value = torch.ones(shape, device=device, dtype=meta.dtype)
        else:
            value = nn.Parameter(torch.ones(shape, device=device, dtype=dtype) if len(shape) == 1 else normal(*shape),
                                 requires_grad=False)
        install(model, target, value)
    return finish_model(model, device, dtype, quantized=quantized)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device, function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        function()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(model, config, device, *, prompt_tokens: int, canvas: int, repeats: int, warmup: int = 1) -> dict[str, Any]:
    import torch

    from engine.generation import new_generation_cache

    text = config.text_config
    generator = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(3, text.vocab_size, (1, prompt_tokens), generator=generator).to(device)
    canvas_ids = torch.randint(3, text.vocab_size, (1, canvas), generator=generator).to(device)
    caches = []

    def encode():
        cache = new_generation_cache(model, prompt_tokens + canvas)  # the engine's preallocated KV cache
        with torch.no_grad():
            model.model.encoder(input_ids=prompt, past_key_values=cache, use_cache=True)
        caches.append(cache)
        del caches[:-1]

    for _ in range(warmup):
        encode()
    encoder_ms = _timed(device, encode, repeats)
    cache = caches[-1]
    with torch.no_grad():
        logits = model(decoder_input_ids=canvas_ids, past_key_values=cache).logits

    def decode():
        with torch.no_grad():
            model(decoder_input_ids=canvas_ids, past_key_values=cache, self_conditioning_logits=logits)

    for _ in range(warmup):
        decode()
    decoder_ms = _timed(device, decode, repeats)
    return {
        "encoder_ms_median": round(statistics.median(encoder_ms), 2),
        "encoder_prompt_tokens": prompt_tokens,
        "decoder_ms_median": round(statistics.median(decoder_ms), 2),
        "decoder_canvas": canvas,
        "repeats": repeats,
    }


def _memory(device) -> dict[str, Any]:
    import torch

    if device.type != "cuda":
        import resource

        return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)}
    return {
        "allocated_gib": round(torch.cuda.memory_allocated(device) / 1024**3, 3),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 1024**3, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 1024**3, 3),
    }


def run_one(config, device, quantization: str, args, dequant_chunk: int | None) -> dict[str, Any]:
    import os

    import torch

    if dequant_chunk:
        os.environ["CANVAS_CHAT_DEQUANT_CHUNK"] = str(dequant_chunk)
    else:
        os.environ.pop("CANVAS_CHAT_DEQUANT_CHUNK", None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    model = build_random(config, device, quantization)
    dense = "bf16" if device.type == "cuda" else "fp32"  # the CPU has no fast bf16 matmul everywhere
    result: dict[str, Any] = {
        "quantization": quantization,
        "dtype": dense if quantization == "bf16" else f"{quantization} + {dense} compute",
        "build_s": round(time.perf_counter() - started, 1),
    }
    result["weights"] = _memory(device)
    canvas = args.canvas or config.canvas_length
    result.update(measure(model, config, device, prompt_tokens=args.prompt_tokens, canvas=canvas, repeats=args.repeats))
    result["peak"] = _memory(device)
    if quantization != "bf16":
        result["dequant_chunk"] = dequant_chunk or ("default (8 on CUDA, 1 on CPU)")
    del model
    gc.collect()
    return result


def bf16_fits(config, device) -> tuple[bool, str]:
    import torch

    from engine.planner import GIB, plan

    if device.type != "cuda":
        return True, ""
    free, _ = torch.cuda.mem_get_info(device)
    estimate = plan(config.to_dict(), "bf16", 2048, free)
    if estimate.verdict == "does_not_fit":
        return False, f"bf16 skipped: needs ~{estimate.total_bytes / GIB:.1f} GiB, {free / GIB:.1f} GiB free"
    return True, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quantization", default="nf4,bf16", help="comma list of nf4, nf4-double, bf16")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="encoder prompt (default 1024; small: 128)")
    parser.add_argument("--canvas", type=int, default=None, help="decoder canvas (default: the config's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dequant-chunk", default="", help="comma list of experts dequantized at once, e.g. 1,8,32")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --size small --device cpu", file=sys.stderr)
        return 2
    args.prompt_tokens = args.prompt_tokens or (1024 if args.size == "full" else 128)
    config = make_config(args.size)
    report: dict[str, Any] = {
        "size": args.size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "runs": [],
        "skipped": [],
    }
    chunks = [int(c) for c in args.dequant_chunk.split(",") if c.strip()] or [None]
    for quantization in [q.strip() for q in args.quantization.split(",") if q.strip()]:
        if quantization == "bf16":
            fits, why = bf16_fits(config, device)
            if not fits:
                report["skipped"].append(why)
                continue
            runs = [(quantization, None)]
        else:
            runs = [(quantization, chunk) for chunk in chunks]
        for quantization_name, chunk in runs:
            try:
                report["runs"].append(run_one(config, device, quantization_name, args, chunk))
            except torch.OutOfMemoryError as exc:
                report["skipped"].append(f"{quantization_name}: out of memory ({str(exc).splitlines()[0]})")
                gc.collect()
                torch.cuda.empty_cache()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['size']} architecture on {report['device']} (torch {report['torch']})")
        for run in report["runs"]:
            memory = run["peak"].get("peak_allocated_gib", run["peak"].get("peak_rss_gib"))
            print(f"  {run['quantization']:<10} chunk={run.get('dequant_chunk', '-')!s:<28} weights {run['weights']}  "
                  f"peak {memory} GiB  decoder {run['decoder_ms_median']} ms/forward (canvas {run['decoder_canvas']})  "
                  f"encoder {run['encoder_ms_median']} ms ({run['encoder_prompt_tokens']} tokens)")
        for line in report["skipped"]:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
