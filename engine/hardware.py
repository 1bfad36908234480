"""What this PC can run, in plain words: the memory plan for the real model and the verdict.

`probe()` answers the worker's `ProbeHardware` request, `python -m engine hardware` and, without
torch (`use_torch=False`), the GUI's own check before the worker is up. The facts come from
`engine.machine` (nvidia-smi, RAM, disk) and `engine.hub`; torch is imported only inside
`probe_torch`, so the GUI may import this module.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
from typing import Any

from engine.hub import DOWNLOAD_BYTES_ESTIMATE, REAL_MODEL_ID, REAL_MODEL_NAME, hub_cache_dir, real_model_downloaded
from engine.machine import disk_space, query_nvidia_smi, system_ram

log = logging.getLogger("canvas_chat.engine.hardware")

REPORT_SCHEMA = 1
GIB = 1024**3

# The simple estimate, used when engine.planner cannot answer (its figures for this model at
# 8k tokens; MODEL_NOTES.md "Size and memory"): NF4 weights with the experts quantized, the bf16
# vision tower, the preallocated KV cache (sliding buffers of two windows and two canvases, full
# buffers by doubling from 256 tokens) and the copy of it a turn keeps, the 8k-token prompt's
# activations, the CUDA context and fragmentation.
NF4_WEIGHTS_BYTES = 15_280_000_000
VISION_WEIGHTS_BYTES = 1_146_000_000
KV_BYTES_PER_TOKEN_FULL = 20_480
KV_BYTES_SLIDING_BUFFERS = 204_800 * (2 * 1_023 + 2 * 256)
ACTIVATIONS_BYTES = 2_090_000_000
# CUDA context plus allocator fragmentation, as engine.planner counts them for this model.
OVERHEAD_BYTES = 1_800_000_000
DEFAULT_CONTEXT_TOKENS = 8192
# CUDA builds of torch 2.6+ target Turing (RTX 20 series, 7.5) and newer.
MIN_COMPUTE_CAPABILITY = (7, 5)
LOW_RAM_BYTES = 16 * GIB
# Verdict codes under which the real model runs on this PC.
RUNNABLE_CODES = ("ok", "ok_shorter_context", "ok_without_images")


# ---------------------------------------------------------------------------- torch


def probe_torch(problems: list[str]) -> dict[str, Any]:
    """CUDA as torch sees it: availability, the build's CUDA version, per-device properties."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken torch install is a finding, not a crash
        problems.append(f"torch cannot be imported ({type(exc).__name__}: {exc})")
        return {"cuda_available": False, "cuda_version": None, "devices": []}
    info: dict[str, Any] = {"cuda_available": False, "cuda_version": torch.version.cuda, "devices": []}
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                free, total = torch.cuda.mem_get_info(index)
                info["devices"].append(
                    {
                        "index": index,
                        "name": props.name,
                        "compute_capability": f"{props.major}.{props.minor}",
                        "total_vram_bytes": int(total),
                        "free_vram_bytes": int(free),
                    }
                )
    except Exception as exc:  # noqa: BLE001 - CUDA init failures (driver too old, busy GPU) are findings
        problems.append(f"CUDA could not be initialised ({type(exc).__name__}: {exc})")
        info["cuda_available"] = False
    return info


# ---------------------------------------------------------------------------- memory plan


def estimate_plan(context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> dict[str, Any]:
    full_tokens = 256
    while full_tokens < context_tokens:
        full_tokens *= 2
    kv = 2 * (KV_BYTES_SLIDING_BUFFERS + KV_BYTES_PER_TOKEN_FULL * full_tokens)
    weights = NF4_WEIGHTS_BYTES + VISION_WEIGHTS_BYTES
    return {
        "source": "estimate",
        "quantization": "nf4",
        "vision": True,
        "vision_bytes": VISION_WEIGHTS_BYTES,
        "context_tokens": context_tokens,
        "weights_bytes": weights,
        "kv_cache_bytes": kv,
        "activations_bytes": ACTIVATIONS_BYTES,
        "overhead_bytes": OVERHEAD_BYTES,
        "total_bytes": weights + kv + ACTIVATIONS_BYTES + OVERHEAD_BYTES,
    }


def planner_plan(
    gpu_memory_bytes: int | None, context_tokens: int = DEFAULT_CONTEXT_TOKENS, *, vision: bool = True
) -> dict[str, Any] | None:
    """The memory planner's answer for a card of this size (None: ask for the requirement only).

    `vision`: planned with image input, as the setup verdict assumes: the real model reads images
    and the worker loads its vision tower when the first one is attached, so a chat with a picture
    needs the tower's weights too. Such a plan also carries the text-only one's verdict
    (`text_only_*`), for a card that fits text chats but not images.

    Returns None when the planner is not available or fails; the caller falls back to the
    simple estimate.
    """
    try:
        from engine.planner import plan as plan_memory
        from engine.real_config import load_config_dict

        config = load_config_dict(REAL_MODEL_ID)
        budget = gpu_memory_bytes if gpu_memory_bytes else 1024 * GIB
        answer = plan_memory(config, "nf4", context_tokens, budget, vision=vision, model=REAL_MODEL_ID)
        text_only = plan_memory(config, "nf4", context_tokens, budget, model=REAL_MODEL_ID) if vision else None
    except Exception as exc:  # noqa: BLE001 - the estimate is a safe fallback
        log.warning("memory planner unavailable, using the simple estimate: %s", exc)
        return None
    result = _plan_from_planner(answer.to_dict(), context_tokens)
    if result is not None:
        result["vision"] = answer.vision
        result["vision_bytes"] = answer.weights_breakdown.get("vision", 0)
        if text_only is not None:
            result["text_only_total_bytes"] = text_only.total_bytes
            result["text_only_verdict"] = text_only.verdict
    if result is not None and not gpu_memory_bytes:
        for key in ("fits", "verdict", "max_context_tokens", "text_only_verdict"):
            result.pop(key, None)
    return result


def _plan_from_planner(answer: Any, context_tokens: int) -> dict[str, Any] | None:
    """Maps the planner's `Plan.to_dict()` onto this report's plan fields."""
    if not isinstance(answer, dict):
        return None
    total = _first_int(answer, "total_bytes")
    if total is None:
        return None
    plan: dict[str, Any] = {
        "source": "planner",
        "quantization": str(answer.get("quantization") or "nf4"),
        "context_tokens": int(answer.get("context_tokens") or context_tokens),
        "weights_bytes": _first_int(answer, "weights_bytes"),
        "kv_cache_bytes": _first_int(answer, "kv_cache_bytes"),
        "activations_bytes": _first_int(answer, "activations_bytes"),
        "overhead_bytes": _first_int(answer, "overhead_bytes"),
        "total_bytes": total,
    }
    if isinstance(answer.get("verdict"), str):
        plan["verdict"] = answer["verdict"]  # fits | fits_shorter_context | does_not_fit
        plan["fits"] = answer["verdict"] != "does_not_fit"
        plan["max_context_tokens"] = _first_int(answer, "max_context_tokens")
        plan["reason"] = str(answer.get("reason") or "")
    return plan


def _first_int(mapping: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = mapping.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return None


# ---------------------------------------------------------------------------- verdict


def gib(value: int | float | None) -> str:
    """Bytes as the "GB" that Windows and card boxes show (GiB), e.g. '24 GB' or '7.5 GB'."""
    if value is None:
        return "? GB"
    number = value / GIB
    return f"{number:.0f} GB" if number >= 10 or abs(number - round(number)) < 0.05 else f"{number:.1f} GB"


def _capability(value: str | None) -> tuple[int, int] | None:
    try:
        major, minor = str(value).split(".", 1)
        return int(major), int(minor)
    except (TypeError, ValueError):
        return None


def pick_gpu(gpus: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The card the engine would use: the one with the most memory."""
    return max(gpus, key=lambda gpu: gpu.get("total_vram_bytes") or 0) if gpus else None


def make_verdict(
    gpu: dict[str, Any] | None,
    plan: dict[str, Any],
    *,
    cuda_available: bool | None,
    ram_total_bytes: int | None,
    disk_free_bytes: int | None,
    disk_path: str,
    model_downloaded: bool,
) -> dict[str, Any]:
    """The answer and its reasons, in plain words."""
    need = int(plan["total_bytes"])
    quant = str(plan.get("quantization", "nf4")).upper().replace("-DOUBLE", " (double)")
    notes: list[str] = []
    if gpu is None:
        code, summary = "no_gpu", "No NVIDIA GPU found: Canvas Chat will use the built-in demo model on the CPU."
        notes.append(
            f"{REAL_MODEL_NAME} needs an NVIDIA GPU with about {gib(need)} of memory "
            "(a 24 GB card such as an RTX 3090 or 4090, or a 32 GB RTX 5090)."
        )
    else:
        name = gpu.get("name") or "NVIDIA GPU"
        total = gpu.get("total_vram_bytes")
        free = gpu.get("free_vram_bytes")
        capability = _capability(gpu.get("compute_capability"))
        planned = plan.get("verdict")  # the planner's own verdict, when it answered for this card
        fits = planned != "does_not_fit" if isinstance(planned, str) else (total is not None and need <= total)
        if capability is not None and capability < MIN_COMPUTE_CAPABILITY:
            code = "gpu_too_old"
            summary = (
                f"The {name} (compute capability {gpu.get('compute_capability')}) is too old for "
                "Canvas Chat's CUDA build: it will use the built-in demo model on the CPU."
            )
            notes.append("DiffusionGemma on the GPU needs an RTX 20-series card or newer (compute capability 7.5+).")
        elif cuda_available is False:
            code = "cuda_unavailable"
            driver = gpu.get("driver_version")
            summary = (
                f"The {name} is present but CUDA cannot use it"
                + (f" (driver {driver})" if driver else "")
                + ": Canvas Chat will use the built-in demo model on the CPU."
            )
            notes.append("Install the latest NVIDIA Game Ready or Studio driver, then restart Canvas Chat.")
        elif not fits and plan.get("text_only_verdict") == "fits":
            code = "ok_without_images"
            text_need = int(plan.get("text_only_total_bytes") or need)
            summary = (
                f"This PC can run {REAL_MODEL_NAME} for text chats ({quant}, ~{gib(text_need)} of {gib(total)}), "
                "but not with images."
            )
            notes.append(
                f"A chat with an image also loads the vision tower: about {gib(need)} in all, more than this card has."
            )
        elif not fits:
            code = "not_enough_vram"
            summary = (
                f"{gib(total)} of VRAM is not enough for {REAL_MODEL_NAME}: it needs about {gib(need)} "
                f"({quant}). Canvas Chat will use the built-in demo model on the CPU."
            )
            notes.append("24 GB cards (RTX 3090, RTX 4090) and 32 GB cards (RTX 5090) can run it.")
        elif planned == "fits_shorter_context":
            code = "ok_shorter_context"
            limit = plan.get("max_context_tokens") or 0
            context = plan.get("context_tokens", 0)
            if plan.get("text_only_verdict") == "fits":
                summary = (
                    f"This PC can run {REAL_MODEL_NAME} ({quant}, {gib(total)} of VRAM): text chats of "
                    f"{context:,} tokens, chats with an image of up to {limit:,} tokens."
                )
                notes.append(f"With an image, {context:,}-token conversations need about {gib(need)}.")
            else:
                summary = (
                    f"This PC can run {REAL_MODEL_NAME} ({quant}, {gib(total)} of VRAM) with conversations "
                    f"of up to {limit:,} tokens."
                )
                notes.append(f"Longer conversations ({context:,} tokens) need about {gib(need)}.")
        else:
            code = "ok"
            images = " with image input" if plan.get("vision") else ""
            summary = f"This PC can run {REAL_MODEL_NAME} ({quant}, ~{gib(need)} of {gib(total)}{images})."
        if code in ("ok", "ok_shorter_context") and plan.get("vision"):
            notes.append(
                f"Planned with image input: the vision tower (about {gib(plan.get('vision_bytes'))}) "
                "loads when you first attach an image."
            )
        if code in ("ok", "ok_shorter_context") and free is not None and free < min(need, total or need):
            notes.append(
                f"Only {gib(free)} of VRAM is free right now: close other programs that use the GPU "
                "(games, other AI apps) before loading the model."
            )
    can_run = code in RUNNABLE_CODES
    if can_run and not model_downloaded:
        if disk_free_bytes is not None and disk_free_bytes < DOWNLOAD_BYTES_ESTIMATE:
            notes.append(
                f"The download needs about {gib(DOWNLOAD_BYTES_ESTIMATE)} of free disk space; "
                f"{gib(disk_free_bytes)} is free at {disk_path}."
            )
        else:
            notes.append(f"The model is not downloaded yet (about {gib(DOWNLOAD_BYTES_ESTIMATE)}).")
    if can_run and ram_total_bytes is not None and ram_total_bytes < LOW_RAM_BYTES:
        notes.append(f"With {gib(ram_total_bytes)} of system memory, loading the model will be slow.")
    return {
        "code": code,
        "can_run_real_model": can_run,
        "recommended": "real" if can_run and model_downloaded else "demo",
        "summary": summary,
        "notes": notes,
    }


# ---------------------------------------------------------------------------- the report


def probe(*, models_dir: str | os.PathLike[str] | None = None, use_torch: bool = True) -> dict[str, Any]:
    """A JSON-able report of this PC and the verdict for the real model.

    With `use_torch` (the worker), CUDA is checked through torch and `source` is "engine";
    without (the GUI, before the worker is up), `cuda_available` is None and `source` is "gui".
    """
    problems: list[str] = []
    gpus = query_nvidia_smi(problems)
    driver = next((gpu["driver_version"] for gpu in gpus if gpu.get("driver_version")), None)
    cuda_available: bool | None = None
    cuda_version: str | None = None
    if use_torch:
        torch_info = probe_torch(problems)
        cuda_available = torch_info["cuda_available"]
        cuda_version = torch_info["cuda_version"]
        gpus = _merge_torch_devices(gpus, torch_info["devices"])
    gpu = pick_gpu(gpus)
    ram_total, ram_available = system_ram()
    cache_dir = hub_cache_dir()
    disk_path, disk_free, disk_total = disk_space(models_dir or cache_dir)
    # Planned against the card's whole memory: what other programs hold now is a note, not a no.
    plan = planner_plan(int(gpu["total_vram_bytes"]) if gpu and gpu.get("total_vram_bytes") else None)
    plan = plan or estimate_plan()
    downloaded = real_model_downloaded(cache_dir)
    return {
        "schema": REPORT_SCHEMA,
        "source": "engine" if use_torch else "gui",
        "platform": platform.platform(),
        "gpus": gpus,
        "gpu": gpu,
        "driver_version": driver,
        "cuda_available": cuda_available,
        "cuda_version": cuda_version,
        "ram_total_bytes": ram_total,
        "ram_available_bytes": ram_available,
        "disk_path": disk_path,
        "disk_free_bytes": disk_free,
        "disk_total_bytes": disk_total,
        "model_id": REAL_MODEL_ID,
        "model_downloaded": downloaded,
        "download_bytes": DOWNLOAD_BYTES_ESTIMATE,
        "plan": plan,
        "verdict": make_verdict(
            gpu,
            plan,
            cuda_available=cuda_available,
            ram_total_bytes=ram_total,
            disk_free_bytes=disk_free,
            disk_path=disk_path,
            model_downloaded=downloaded,
        ),
        "problems": problems,
    }


def _merge_torch_devices(smi: list[dict[str, Any]], torch_devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """nvidia-smi's list, with torch's fresher capability and memory figures where it has them.

    Matched by name and order: CUDA_VISIBLE_DEVICES can renumber devices for torch.
    """
    if not smi:
        return [dict(device, driver_version=None) for device in torch_devices]
    merged = [dict(gpu) for gpu in smi]
    unused = list(torch_devices)
    for gpu in merged:
        match = next((device for device in unused if device["name"] == gpu["name"]), None)
        if match is None:
            continue
        unused.remove(match)
        gpu["compute_capability"] = match["compute_capability"]
        gpu["total_vram_bytes"] = match["total_vram_bytes"]
        gpu["free_vram_bytes"] = match["free_vram_bytes"]
    return merged


def recommended_model(report: dict[str, Any]) -> str | None:
    """The model to load when the settings name none: the real model's hub id where this PC can
    run it and it is downloaded, else None (the built-in demo model)."""
    verdict = report.get("verdict") or {}
    return str(report.get("model_id") or REAL_MODEL_ID) if verdict.get("recommended") == "real" else None


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text for the terminal."""
    lines = [report["verdict"]["summary"]]
    lines += [f"  {note}" for note in report["verdict"]["notes"]]
    lines.append("")
    if report["gpus"]:
        for gpu in report["gpus"]:
            lines.append(
                f"GPU {gpu.get('index', '?')}: {gpu['name']}, compute capability {gpu.get('compute_capability') or '?'}, "
                f"{gib(gpu.get('free_vram_bytes'))} free of {gib(gpu.get('total_vram_bytes'))}"
            )
    else:
        lines.append("GPU: none found")
    lines.append(f"NVIDIA driver: {report.get('driver_version') or 'not found'}")
    cuda = report.get("cuda_available")
    lines.append(
        "CUDA: "
        + ("not checked" if cuda is None else ("available" if cuda else "not available"))
        + (f" (torch built for CUDA {report['cuda_version']})" if report.get("cuda_version") else "")
    )
    lines.append(f"System memory: {gib(report.get('ram_available_bytes'))} free of {gib(report.get('ram_total_bytes'))}")
    lines.append(f"Disk: {gib(report.get('disk_free_bytes'))} free at {report['disk_path']}")
    plan = report["plan"]
    lines.append(
        f"Memory plan ({plan['source']}): {gib(plan['total_bytes'])} for {plan['quantization'].upper()} "
        f"at {plan['context_tokens']:,} tokens of context"
    )
    lines.append(f"{REAL_MODEL_ID}: {'downloaded' if report.get('model_downloaded') else 'not downloaded'}")
    for problem in report.get("problems", []):
        lines.append(f"note: {problem}")
    return "\n".join(lines)


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine hardware", description="What this PC can run.")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-torch", action="store_true", help="skip the CUDA check through torch (faster)")
    parser.add_argument("--models-dir", help="measure free disk space here (default: the Hugging Face cache)")
    args = parser.parse_args(argv)
    report = probe(models_dir=args.models_dir, use_torch=not args.no_torch)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
