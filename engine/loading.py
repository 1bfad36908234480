"""Resolves a model (local folder or hub id), checks it, and loads it with its tokenizer.

Every check that can fail here maps to a protocol error code with a message that tells the
user what is wrong with the folder, so a broken download never surfaces as a traceback.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import model_folder
from engine.errors import EngineError

log = logging.getLogger("canvas_chat.engine.loading")

HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# progress(stage, message, fraction, **extra) where extra matches LoadProgress's counters.
ProgressCallback = Callable[..., None]


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str  # what the user asked for: a folder or a hub id
    path: Path
    device: str
    quantization: str
    canvas_length: int
    parameters: int
    load_s: float
    is_demo: bool


def _no_progress(stage: str, message: str, fraction: float, **extra: int) -> None:
    pass


def resolve_model_folder(model: str, revision: str | None = None) -> Path:
    """A local folder as given, or the snapshot of a hub id in the Hugging Face cache."""
    candidate = Path(model).expanduser()
    if candidate.exists():
        if not candidate.is_dir():
            raise EngineError("model_broken", f"{model} is a file, not a model folder.")
        return candidate
    if HUB_ID_PATTERN.match(model) and not model.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            # The worker never downloads on its own: downloads belong to the setup screen,
            # with progress, pause and a disk check.
            return Path(snapshot_download(model, revision=revision, local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError):
            raise EngineError(
                "model_not_downloaded",
                f"{model} has not been downloaded yet. Open Model setup to download it, "
                "or choose a local folder that holds it.",
            ) from None
    raise EngineError("model_not_found", f"No model folder at {model}.")


def check_model_folder(folder: Path) -> dict[str, Any]:
    """Checks config, weights and tokenizer files (the GUI's own check); returns the parsed config."""
    check = model_folder.check_model_folder(folder)
    if not check.ok:
        raise EngineError(check.code, check.message)
    return check.config


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise EngineError("load_failed", "No CUDA GPU is available to this process; choose the CPU instead.")
    return requested


def pick_quantization(requested: str, device: str, parameter_estimate: int) -> str:
    if requested != "auto":
        return requested
    # Only the full-size model needs 4-bit to fit a consumer card; small models run unquantized.
    return "nf4" if device == "cuda" and parameter_estimate > 2_000_000_000 else "none"


def estimate_parameters(config: dict[str, Any]) -> int:
    text = config.get("text_config") or {}
    hidden = int(text.get("hidden_size", 0))
    layers = int(text.get("num_hidden_layers", 0))
    experts = int(text.get("num_experts") or 0)
    expert_size = int(text.get("moe_intermediate_size") or 0)
    vocab = int(text.get("vocab_size", 0))
    return vocab * hidden + layers * (experts * 3 * hidden * expert_size + 12 * hidden * hidden)


def load_model(
    source: str,
    *,
    device: str = "auto",
    quantization: str = "auto",
    vision: bool = False,
    revision: str | None = None,
    progress: ProgressCallback = _no_progress,
) -> LoadedModel:
    started = time.perf_counter()
    progress("resolving", f"Looking for {source}", 0.0)
    folder = resolve_model_folder(source, revision)
    config = check_model_folder(folder)
    device = pick_device(device)
    quantization = pick_quantization(quantization, device, estimate_parameters(config))

    progress("tokenizer", "Loading the tokenizer", 0.05)
    tokenizer = load_tokenizer(folder)

    progress("weights", f"Loading weights from {folder.name}", 0.1)
    if quantization in ("nf4", "nf4-double"):
        model = _load_quantized(folder, quantization=quantization, device=device, vision=vision, progress=progress)
    else:
        model = _load_unquantized(folder, device=device, quantization=quantization, progress=progress)
    model.eval()
    progress("ready", "Model ready", 1.0)
    canvas_length = int(getattr(model.config, "canvas_length", 0) or 0)
    demo_manifest = folder / "demo.json"
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=source,
        path=folder,
        device=device,
        quantization=quantization,
        canvas_length=canvas_length,
        parameters=_parameter_count(config, vision),
        load_s=time.perf_counter() - started,
        is_demo=demo_manifest.is_file(),
    )


def _parameter_count(config: dict[str, Any], vision: bool) -> int:
    """From the config: a 4-bit model packs two weights a byte and keeps experts as buffers."""
    from engine.planner import architecture_from_config

    architecture = architecture_from_config(config)
    return architecture.text_total + (architecture.vision_total if vision else 0)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many types for a bad tokenizer folder
        raise EngineError("tokenizer_missing", f"The tokenizer in {folder} cannot be loaded ({exc}).") from None
    if not getattr(tokenizer, "chat_template", None):
        raise EngineError("tokenizer_missing", f"The tokenizer in {folder} has no chat template.")
    return tokenizer


def _load_unquantized(folder: Path, *, device: str, quantization: str, progress: ProgressCallback = _no_progress):
    import torch
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    dtype = torch.bfloat16 if (device == "cuda" or quantization == "bf16") else torch.float32
    previous_hook = hf_logging.set_tqdm_hook(
        lambda factory, args, kwargs: _WeightProgress(progress, *args, **kwargs)
    )
    try:
        model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        raise EngineError(
            "model_broken", f"The weights in {folder} cannot be loaded ({type(exc).__name__}: {exc})."
        ) from None
    finally:
        hf_logging.set_tqdm_hook(previous_hook)
    if type(model).__name__ != "DiffusionGemmaForBlockDiffusion":
        raise EngineError("wrong_model_type", f"{folder.name} did not load as a DiffusionGemma model.")
    progress("device", f"Moving the model to {device}", 0.92)
    return model.to(device)


class _WeightProgress:
    """Stands in for the tqdm bar of transformers' "Loading weights" loop and reports progress."""

    REPORTS = 20  # at most this many progress events per bar

    def __init__(self, progress: ProgressCallback, iterable=None, *args: Any, total=None, desc="", **kwargs: Any):
        self.progress = progress
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else 0)
        self.description = desc or "Loading weights"
        self.count = 0
        self.reported = -1

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.count += n
        if not self.total:
            return
        step = int(self.REPORTS * self.count / self.total)
        if step != self.reported:
            self.reported = step
            share = min(1.0, self.count / self.total)
            self.progress("weights", f"{self.description}: {self.count} of {self.total}", 0.1 + 0.8 * share)

    def close(self) -> None:
        pass

    def set_description(self, desc: str = "", *args: Any, **kwargs: Any) -> None:
        self.description = desc or self.description

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        pass


def _load_quantized(folder: Path, *, quantization: str, device: str, vision: bool, progress: ProgressCallback):
    # --- quantized loading dispatch (issue 4) -------------------------------------------------
    # engine.quantized_copy.load_quantized: uses the NF4 copy in the user's models folder when it is
    # valid, else streams + quantizes the source (engine/streaming_loader.py) and saves the copy.
    try:
        from engine.quantized_copy import load_quantized
    except ImportError:
        raise EngineError("load_failed", f"{quantization} loading is not available in this build.") from None

    def forward_progress(info: dict[str, Any]) -> None:
        info = dict(info)
        progress(info.pop("stage", "weights"), info.pop("message", ""), float(info.pop("fraction", 0.5)), **info)

    return load_quantized(folder, quantization=quantization, device=device, vision=vision, progress=forward_progress)
    # --- end of the issue 4 dispatch --------------------------------------------------------
