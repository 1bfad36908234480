"""One decoder forward of the full model: NF4 with and without the fused Triton kernels, and bf16.

    python -m bench.fused_kernel                         # full size on the CUDA GPU it finds
    python -m bench.fused_kernel --size small --device cpu   # the same code, tiny, on the CPU

Random weights (bench/gpu_fit.py builds them on the device, NF4 quantized tensor by tensor). The NF4
model is built once and run three ways: the dequantize-then-matmul experts ("stock"), the fused
experts kernel and fused RMSNorms ("fused experts", the default CUDA path) and the same plus fused
text linears ("fused all"); then bf16 where it fits. Tokens/s is the canvas over 16 decoder forwards (16 denoising steps per canvas,
the sampler and the prompt's encoding left out). Also prints how far the fused logits are from
the stock ones, on the same weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from typing import Any

STEPS_PER_CANVAS = 16


def _variants(model) -> list[tuple[str, Any]]:
    import bitsandbytes as bnb

    from engine import quantization as q

    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaRMSNorm

    patched = [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, DiffusionGemmaRMSNorm))]

    def stock():
        for module in patched:
            module.__dict__.pop("forward", None)
        model.set_experts_implementation(q.NF4_EXPERTS_IMPLEMENTATION)
        model.set_attn_implementation("sdpa")

    def fused_experts():  # the default CUDA path (CANVAS_CHAT_NF4_KERNEL=auto): fused experts and norms
        stock()
        q.use_fused_path(model, linears=False)

    def fused_all():
        stock()
        q.use_fused_path(model, linears=True)

    return [("nf4 stock", stock), ("nf4 fused experts", fused_experts), ("nf4 fused all", fused_all)]


def _logits(model, config, device, canvas: int, prompt_tokens: int = 64):
    import torch
    from transformers import DynamicCache

    generator = torch.Generator(device="cpu").manual_seed(1)
    prompt = torch.randint(3, config.text_config.vocab_size, (1, prompt_tokens), generator=generator).to(device)
    canvas_ids = torch.randint(3, config.text_config.vocab_size, (1, canvas), generator=generator).to(device)
    cache = DynamicCache(config=config.text_config)
    with torch.no_grad():
        model.model.encoder(input_ids=prompt, past_key_values=cache, use_cache=True)
        return model(decoder_input_ids=canvas_ids, past_key_values=cache).logits.float()


def _result(name: str, measured: dict[str, Any]) -> dict[str, Any]:
    ms = measured["decoder_ms_median"]
    return {"variant": name, **measured,
            "tokens_per_s_at_16_steps": round(measured["decoder_canvas"] * 1000 / (STEPS_PER_CANVAS * ms), 1)}


def run(args) -> dict[str, Any]:
    import torch

    from bench import gpu_fit
    from engine import quantization as q
    from engine.kernels import nf4_moe, norms

    device = torch.device(args.device)
    config = gpu_fit.make_config(args.size)
    canvas = args.canvas or config.canvas_length
    report: dict[str, Any] = {
        "size": args.size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "steps_per_canvas": STEPS_PER_CANVAS,
        "runs": [],
        "skipped": [],
    }
    model = gpu_fit.build_random(config, device, args.quantization)
    reason = q.fused_kernel_unavailable_reason(model)
    reference = None
    for name, select in _variants(model):
        if name != "nf4 stock" and reason is not None:
            report["skipped"].append(f"{name}: {reason}")
            continue
        select()
        q._fused_failure.clear()
        norms._failure.clear()
        measured = gpu_fit.measure(model, config, device, prompt_tokens=args.prompt_tokens, canvas=canvas,
                                   repeats=args.repeats)
        result = _result(name, measured)
        logits = _logits(model, config, device, canvas, min(64, args.prompt_tokens))
        if reference is None:
            reference = logits
        else:
            result["max_rel_logit_diff_vs_stock"] = float((logits - reference).abs().max() / reference.abs().max())
            result["top1_agreement_vs_stock"] = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
        if q._fused_failure or norms._failure:
            result["fell_back"] = {**q._fused_failure, **norms._failure}
        report["runs"].append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)  # a cut run still shows what it measured
    report["kernel_mode_default"] = nf4_moe.kernel_mode()
    del model, reference
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    fits, why = gpu_fit.bf16_fits(config, device)
    if not fits:
        report["skipped"].append(why)
    else:
        try:
            model = gpu_fit.build_random(config, device, "bf16")
            measured = gpu_fit.measure(model, config, device, prompt_tokens=args.prompt_tokens, canvas=canvas,
                                       repeats=args.repeats)
            report["runs"].append(_result("bf16" if device.type == "cuda" else "fp32", measured))
            del model
        except torch.OutOfMemoryError as exc:
            report["skipped"].append(f"bf16: out of memory ({str(exc).splitlines()[0]})")
    return report


def render(report: dict[str, Any]) -> str:
    """The figures for bench/README.md: which GPU, ms per full-size decoder forward, tokens/s."""
    lines = [f"{report['size']} architecture on {report['device']} (torch {report['torch']}), "
             f"tokens/s at {STEPS_PER_CANVAS} steps per canvas"]
    for r in report["runs"]:
        diff = f"  logits vs stock {r['max_rel_logit_diff_vs_stock']:.1e}" if "max_rel_logit_diff_vs_stock" in r else ""
        fell = f"  FELL BACK: {r['fell_back']}" if r.get("fell_back") else ""
        lines.append(f"  {r['variant']:<18} decoder {r['decoder_ms_median']:>9} ms/forward (canvas {r['decoder_canvas']})"
                     f"  {r['tokens_per_s_at_16_steps']:>8} tokens/s{diff}{fell}")
    lines += [f"  skipped {line}" for line in report["skipped"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fused_kernel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quantization", choices=("nf4", "nf4-double"), default="nf4")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="encoder prompt (default 1024; small: 128)")
    parser.add_argument("--canvas", type=int, default=None, help="decoder canvas (default: the config's, 256)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--render", metavar="JSON", help="print the figures of a report this command wrote, and exit")
    args = parser.parse_args(argv)
    if args.render:
        with open(args.render, encoding="utf-8") as file:
            print(render(json.load(file)))
        return 0

    import torch

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --size small --device cpu", file=sys.stderr)
        return 2
    args.prompt_tokens = args.prompt_tokens or (1024 if args.size == "full" else 128)
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
