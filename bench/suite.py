"""The suites: which figures each one measures, on which sizes, and how the results are assembled."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import autoregressive, diffusion, machine, models
from bench.configs import autoregressive_config, diffusion_config, text_config_dict
from bench.timing import derived

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STEPS_PER_CANVAS = (8, 16, 24, 48)
PUBLISHED_TOKENS_PER_FORWARD = (15, 20)


@dataclass
class Plan:
    """How much of each measurement a suite makes."""

    device: str
    dtypes: tuple[str, ...]
    canvas_length: int  # end-to-end runs and the break-even use this canvas
    decoder_canvas_lengths: tuple[int, ...] = (64, 128, 256)
    decoder_steps: int = 8
    encoder_prompt_tokens: tuple[int, ...] = (256, 1024, 4096)
    encoder_warmup: int = 1  # the longest prompts pick new kernels on a GPU
    prompt_tokens: int = 256  # before every decoder, end-to-end and AR measurement
    steps_per_canvas: tuple[int, ...] = STEPS_PER_CANVAS
    canvases: int = 2
    ar_new_tokens: int = 32
    runs: int = 3
    warmup: int = 1
    overhead_runs: int = 13
    overhead_warmup: int = 2
    overhead_new_tokens: int = 144  # 9 canvases, 72 decoder forwards


def plan_for(suite: str, size: str) -> Plan:
    if suite == "cpu" and size == "full":
        raise SystemExit("the full-size model (51.7 GB in bf16) needs a GPU: use --suite gpu --size full")
    if suite == "cpu":
        # fp32: the CPU's own precision (bf16 matrix work on a CPU is emulated and tells nothing).
        return Plan(
            device="cpu", dtypes=("fp32", "nf4"), canvas_length=64, decoder_steps=2, canvases=1, ar_new_tokens=16,
            runs=3, warmup=1, encoder_warmup=0, overhead_runs=11,
        )
    if size == "small":
        return Plan(device="cuda", dtypes=("bf16",), canvas_length=256, decoder_steps=2, canvases=1, runs=3)
    # Sized for a lent GPU's few minutes: ~350 full-size decoder forwards per precision.
    return Plan(device="cuda", dtypes=("bf16", "nf4"), canvas_length=256, decoder_steps=6, canvases=1, runs=3)


@dataclass
class Results:
    suite: str
    size: str
    plan: Plan
    started: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)

    def skip(self, what: str, why: str) -> None:
        log.warning("skipped %s: %s", what, why)
        self.data.setdefault("skipped", {})[what] = why


def run(
    suite: str, size: str, *, overhead: bool = True, threads: int | None = None, dtypes: tuple[str, ...] | None = None,
    on_progress=None,
) -> dict[str, Any]:
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    plan = plan_for(suite, size)
    if dtypes:
        plan.dtypes = tuple(dtypes)
    progress = on_progress or (lambda data: None)
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--suite gpu needs a CUDA GPU visible to torch")
    transformers.logging.set_verbosity_error()
    results = Results(suite, size, plan)
    started = time.perf_counter()
    info = machine.describe(plan.device)
    info["load_average_at_start"] = machine.load_average()
    text, source = text_config_dict(size)
    results.data.update(
        schema=SCHEMA_VERSION,
        suite=suite,
        size=size,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine=info,
        plan=asdict(plan),
        architecture={
            "text_config_source": source,
            "weights": "random (speed only: these figures say nothing about output quality)",
            "diffusion": "transformers DiffusionGemmaForBlockDiffusion (vision tower shrunk: text prompts never run it)",
            "autoregressive": "transformers Gemma4ForCausalLM with the same text backbone",
            "hidden_size": text["hidden_size"],
            "num_hidden_layers": text["num_hidden_layers"],
            "num_experts": text.get("num_experts"),
            "top_k_experts": text.get("top_k_experts"),
            "vocab_size": text["vocab_size"],
        },
        published={
            "tokens_per_forward": list(PUBLISHED_TOKENS_PER_FORWARD),
            "source": "Google DeepMind (not verified here)",
        },
        dtypes={},
    )

    # Biggest figures first: on a lent GPU with a time limit, what is measured is written at once.
    for dtype in plan.dtypes:
        try:
            results.data["dtypes"][dtype] = _one_dtype(plan, size, dtype, results)
        except Exception as exc:  # noqa: BLE001 - one precision failing (e.g. out of memory) must not lose the rest
            if dtype == plan.dtypes[0]:
                raise
            results.skip(dtype, f"{type(exc).__name__}: {exc}")
            log.warning("%s", traceback.format_exc())
        models.release()
        progress(results.data)
    if overhead:
        _engine_overhead(results)
        progress(results.data)
    info["load_average_at_end"] = machine.load_average()
    results.data["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results.data


def _engine_overhead(results: Results) -> None:
    import torch

    from bench import overhead

    plan = results.plan
    try:
        import engine.generation  # noqa: F401 - the engine's generation path must exist to measure it
    except ImportError as exc:
        results.skip("engine_overhead", f"the engine's generation path is not importable ({exc})")
        return
    oplan = overhead.OverheadPlan(
        device=plan.device, runs=plan.overhead_runs, warmup=plan.overhead_warmup, max_new_tokens=plan.overhead_new_tokens,
        threads=torch.get_num_threads() if plan.device == "cpu" else None,
    )
    results.data["engine_overhead"] = overhead.measure(oplan)


def _one_dtype(plan: Plan, size: str, dtype: str, results: Results) -> dict[str, Any]:
    from transformers import DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM

    device = plan.device
    out: dict[str, Any] = {}

    # --- diffusion
    _reset_peak(device)
    start = time.perf_counter()
    config = diffusion_config(size, plan.canvas_length)
    if dtype == "nf4":
        model = models.build_nf4(DiffusionGemmaForBlockDiffusion, config, device)
    else:
        model = models.build(DiffusionGemmaForBlockDiffusion, config, device, dtype)
    build_s = time.perf_counter() - start
    d: dict[str, Any] = {
        "parameters": models.meta_parameter_count(DiffusionGemmaForBlockDiffusion, config),
        "weights_gib": models.weight_gib(model),
        "build_s": round(build_s, 2),
    }
    # One untimed generate pays for first-call costs (kernel selection, lazy imports) once.
    diffusion.tokens_per_second(model, device, steps=2, prompt_tokens=plan.prompt_tokens, canvases=1, runs=1, warmup=0)
    d["decoder_forward_ms"] = {
        str(c): diffusion.decoder_forward_ms(
            model, device, canvas_length=c, prompt_tokens=plan.prompt_tokens, steps=plan.decoder_steps,
            runs=plan.runs, warmup=0,
        )
        for c in plan.decoder_canvas_lengths
    }
    d["encoder_forward_ms"] = {
        str(n): diffusion.encoder_forward_ms(model, device, prompt_tokens=n, runs=plan.runs, warmup=plan.encoder_warmup if n > 1024 else 0)
        for n in plan.encoder_prompt_tokens
    }
    d["tokens_per_s"] = {
        str(s): diffusion.tokens_per_second(
            model, device, steps=s, prompt_tokens=plan.prompt_tokens, canvases=plan.canvases, runs=plan.runs, warmup=0
        )
        for s in plan.steps_per_canvas
    }
    d.update(_peak(device))
    out["diffusion"] = d
    del model
    models.release()

    # --- autoregressive baseline
    _reset_peak(device)
    start = time.perf_counter()
    config = autoregressive_config(size)
    if dtype == "nf4":
        ar = models.build_nf4(Gemma4ForCausalLM, config, device)
    else:
        ar = models.build(Gemma4ForCausalLM, config, device, dtype)
    a: dict[str, Any] = {
        "parameters": models.meta_parameter_count(Gemma4ForCausalLM, config),
        "weights_gib": models.weight_gib(ar),
        "build_s": round(time.perf_counter() - start, 2),
    }
    a["ms_per_token"] = autoregressive.ms_per_token(
        ar, device, prompt_tokens=plan.prompt_tokens, new_tokens=plan.ar_new_tokens, runs=plan.runs, warmup=plan.warmup
    )
    a.update(_peak(device))
    ms = a["ms_per_token"]
    a["tokens_per_s"] = derived(1000 / ms["median"], "tokens/s", 1000 / ms["p90"], 1000 / ms["p10"])
    out["autoregressive"] = a
    del ar
    models.release()

    out["break_even"] = _break_even(plan, d, a)
    return out


def _break_even(plan: Plan, d: dict[str, Any], a: dict[str, Any]) -> dict[str, Any]:
    """Tokens per forward DiffusionGemma needs to match the AR baseline, and its speed-up at fixed steps."""
    step = d["decoder_forward_ms"][str(plan.canvas_length)] if str(plan.canvas_length) in d["decoder_forward_ms"] else None
    ar_ms = a["ms_per_token"]
    result: dict[str, Any] = {"canvas_length": plan.canvas_length}
    if step is not None:
        result["tokens_per_forward"] = derived(
            step["median"] / ar_ms["median"], "tokens/forward", step["p10"] / ar_ms["p90"], step["p90"] / ar_ms["p10"],
            meaning="decoder ms per step / AR ms per token",
        )
    ar_tps = a["tokens_per_s"]
    result["speedup_vs_ar"] = {
        steps: derived(
            fig["median"] / ar_tps["median"], "x", fig["p10"] / ar_tps["high"], fig["p90"] / ar_tps["low"],
            tokens_per_forward=fig["tokens_per_forward"],
        )
        for steps, fig in d["tokens_per_s"].items()
    }
    # The same break-even from end-to-end runs: sampling, self-conditioning and the encoder included.
    slowest = d["tokens_per_s"][str(max(plan.steps_per_canvas))]
    steps_total = plan.canvases * max(plan.steps_per_canvas)
    per_step = lambda tps: slowest["new_tokens"] / tps * 1000 / steps_total  # noqa: E731
    result["tokens_per_forward_end_to_end"] = derived(
        per_step(slowest["median"]) / ar_ms["median"], "tokens/forward",
        per_step(slowest["p90"]) / ar_ms["p90"], per_step(slowest["p10"]) / ar_ms["p10"],
        meaning="end-to-end ms per denoising step (at the most steps) / AR ms per token",
    )
    result["published_tokens_per_forward"] = list(PUBLISHED_TOKENS_PER_FORWARD)
    return result


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> dict[str, float]:
    """Peak GPU memory of the phase (weights, cache and activations)."""
    if not device.startswith("cuda"):
        return {}
    import torch

    return {"gpu_peak_memory_gib": round(torch.cuda.max_memory_allocated() / 1024**3, 2)}
