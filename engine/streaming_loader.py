"""Streaming NF4 loader: a meta-device model filled tensor by tensor from safetensors shards.

Peak CPU memory stays at one tensor (the largest is the 1.5 GB bf16 embedding; experts are read 16 at
a time), never the 52 GB checkpoint: shards are read with plain file reads (no mmap, so untouched
shard bytes never count against the process), each weight is materialized once on its device and
installed under every name that ties to it (the encoder shares all its text weights with the
decoder, and lm_head shares the embedding), and text linears and experts are quantized as they
arrive. The vision tower is skipped unless asked for.
"""

from __future__ import annotations

import ctypes
import json
import logging
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import EngineError
from engine.quantization import (
    NF4ExpertWeight,
    QuantSettings,
    alias_groups,
    is_text_linear,
    quantize_linear,
    set_submodule,
    settings_for,
    use_nf4_experts,
)

log = logging.getLogger("canvas_chat.engine.streaming_loader")

ProgressFn = Callable[[dict[str, Any]], None]
VISION_PARTS = ("vision_tower.", "embed_vision.")
EXPERT_READ_CHUNK = 16
# Share of the overall load that reading the weights covers (resolving and the tokenizer come before).
FRACTION_START, FRACTION_END = 0.1, 0.97

_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# ---------------------------------------------------------------------------- safetensors reading


@dataclass(frozen=True)
class TensorEntry:
    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors JSON header and the offset where tensor data starts."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise EngineError("model_broken", f"{path.name} is truncated (no safetensors header).")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise EngineError("model_broken", f"{path.name} is not a safetensors file.")
        header = handle.read(length)
    if len(header) != length:
        raise EngineError("model_broken", f"{path.name} is truncated (header cut short).")
    try:
        return json.loads(header), 8 + length
    except ValueError:
        raise EngineError("model_broken", f"{path.name} has a corrupted safetensors header.") from None


def file_entries(path: Path) -> list[TensorEntry]:
    header, data_start = read_header(path)
    size = path.stat().st_size
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise EngineError("model_broken", f"{path.name}: tensor {name} has unsupported dtype {info.get('dtype')}.")
        begin, end = info["data_offsets"]
        entry = TensorEntry(name, path, dtype, tuple(info["shape"]), data_start + begin, data_start + end)
        if entry.end > size:
            raise EngineError("model_broken", f"{path.name} is truncated: tensor {name} runs past the end of the file.")
        entries.append(entry)
    entries.sort(key=lambda e: e.start)
    return entries


def checkpoint_entries(folder: Path) -> list[TensorEntry]:
    """Every tensor of a model folder, in file order (one or many shards)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise EngineError("model_broken", f"{folder} has no safetensors weights.")
    entries: list[TensorEntry] = []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise EngineError("model_broken", f"{folder} is missing {name}: the download is incomplete.")
        entries.extend(file_entries(path))
    return entries


class ShardReader:
    """Reads tensors (or runs of rows) with plain reads, keeping one open handle per file."""

    def __init__(self) -> None:
        self._handles: dict[Path, Any] = {}

    def _handle(self, path: Path):
        handle = self._handles.get(path)
        if handle is None:
            for old in self._handles.values():
                old.close()
            self._handles = {path: open(path, "rb", buffering=0)}
            handle = self._handles[path]
        return handle

    def read(self, entry: TensorEntry, rows: tuple[int, int] | None = None) -> torch.Tensor:
        shape = list(entry.shape)
        start, end = entry.start, entry.end
        if rows is not None:
            row_bytes = entry.nbytes // max(shape[0], 1)
            start, end = entry.start + rows[0] * row_bytes, entry.start + rows[1] * row_bytes
            shape[0] = rows[1] - rows[0]
        buffer = torch.empty(end - start, dtype=torch.uint8)
        handle = self._handle(entry.file)
        handle.seek(start)
        view = memoryview(buffer.numpy())
        got = 0
        while got < len(view):
            n = handle.readinto(view[got:])
            if not n:
                raise EngineError("model_broken", f"{entry.file.name} is truncated while reading {entry.name}.")
            got += n
        if entry.dtype == torch.bool:
            return buffer.view(torch.bool).reshape(shape)
        return buffer.view(entry.dtype).reshape(shape)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}


# ---------------------------------------------------------------------------- model skeleton


def build_meta_model(config, *, vision: bool):
    """The model class on the meta device (no memory), without its vision tower unless asked."""
    from transformers import DiffusionGemmaForBlockDiffusion

    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    if not vision:
        # Text-only chat never calls the vision tower (only `pixel_values` reach it); dropping it keeps
        # 0.57 B parameters (1.1 GB in bf16) off the GPU.
        model.model.encoder.vision_tower = None
        model.model.encoder.embed_vision = None
    return model


def load_dtype(config, device: torch.device) -> torch.dtype:
    """bf16 on a GPU; on the CPU the checkpoint's own dtype (the tiny test models are fp32)."""
    if device.type == "cuda":
        return torch.bfloat16
    name = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "bfloat16")
    name = name.removeprefix("torch.")
    dtype = getattr(torch, name, torch.bfloat16)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.bfloat16


def _buffer_owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    owners = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, buffer in module._buffers.items():
            if buffer is not None:
                owners[f"{module_name}.{attr}" if module_name else attr] = (module, attr)
    return owners


def finish_model(model: nn.Module, device: torch.device, dtype: torch.dtype, *, quantized: bool) -> nn.Module:
    """Recreates the buffers no checkpoint stores (rotary frequencies, embedding scale), checks that
    nothing is left on the meta device, and switches the experts to the NF4 implementation."""
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import (
        DiffusionGemmaTextRotaryEmbedding,
        DiffusionGemmaTextScaledWordEmbedding,
    )

    for name, module in list(model.named_modules()):
        if isinstance(module, DiffusionGemmaTextRotaryEmbedding) or type(module).__name__.endswith("VisionRotaryEmbedding"):
            if any(b.is_meta for b in module.buffers()):
                set_submodule(model, name, type(module)(module.config, device=device))
        elif isinstance(module, DiffusionGemmaTextScaledWordEmbedding) and module.embed_scale.is_meta:
            module.embed_scale = torch.tensor(module.scalar_embed_scale, device=device)
    leftovers = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    leftovers += [n for n, b in model.named_buffers(remove_duplicate=False) if b.is_meta]
    if leftovers:
        raise EngineError(
            "model_broken",
            f"The checkpoint lacks {len(leftovers)} weight(s) the model needs, e.g. {leftovers[0]}.",
        )
    if quantized:
        use_nf4_experts(model)
    model.requires_grad_(False)
    model.eval()
    return model


@dataclass
class _Target:
    kind: str  # "linear" | "experts" | "tensor" | "buffer"
    holders: list[str]  # every qualified name that must receive the result
    param_id: int | None = None
    shape: tuple[int, ...] | None = None  # what the model built from config.json expects


def plan_targets(model: nn.Module, *, quantize: bool) -> dict[str, _Target]:
    """Qualified tensor name -> what to build for it and where to install it (aliases included)."""
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaTextExperts

    modules = dict(model.named_modules(remove_duplicate=False))
    params = dict(model.named_parameters(remove_duplicate=False))
    targets: dict[str, _Target] = {}
    for param_id, names in alias_groups(model).items():
        kind = "tensor"
        if quantize:
            for name in names:
                owner_name, _, attr = name.rpartition(".")
                owner = modules.get(owner_name)
                if attr == "weight" and is_text_linear(owner_name, owner):
                    kind = "linear"
                elif isinstance(owner, DiffusionGemmaTextExperts) and attr in ("gate_up_proj", "down_proj"):
                    kind = "experts"
        shape = tuple(params[names[0]].shape) if names[0] in params else None
        target = _Target(kind, names, param_id, shape)
        for name in names:
            targets[name] = target
    for name, (owner, attr) in _buffer_owners(model).items():
        targets.setdefault(name, _Target("buffer", [name], shape=tuple(owner._buffers[attr].shape)))
    return targets


def check_shape(entry: TensorEntry, target: _Target) -> None:
    """A same-named tensor of another shape means the weights and config.json disagree: refuse it
    by name rather than install it (a broadcasting norm or a transposed router would load silently)."""
    if target.shape is not None and tuple(entry.shape) != target.shape:
        raise EngineError(
            "model_broken",
            f"{entry.file.name}: tensor {entry.name} has shape {list(entry.shape)}, but the model that "
            f"config.json describes expects {list(target.shape)}. The weights do not belong to this config.",
        )


def install(model: nn.Module, target: _Target, value: Any) -> None:
    modules = dict(model.named_modules(remove_duplicate=False))
    for holder in target.holders:
        owner_name, _, attr = holder.rpartition(".")
        if target.kind == "linear":
            set_submodule(model, owner_name, value)
        elif target.kind == "buffer":
            modules[owner_name]._buffers[attr] = value
        else:
            set_submodule(model, holder, value)


# ---------------------------------------------------------------------------- progress


class LoadProgressReporter:
    """Turns byte and layer counts into LoadProgress-shaped dicts, at most ~10 per second."""

    def __init__(self, progress: ProgressFn | None, bytes_total: int, layers_total: int, what: str):
        self.progress = progress
        self.bytes_total = bytes_total
        self.layers_total = layers_total
        self.bytes_read = 0
        self.layers_quantized = 0
        self.what = what
        self._last = 0.0

    def report(self, stage: str, message: str, *, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        share = self.bytes_read / self.bytes_total if self.bytes_total else 1.0
        self.progress(
            {
                "stage": stage,
                "message": message,
                "fraction": FRACTION_START + (FRACTION_END - FRACTION_START) * share,
                "bytes_read": self.bytes_read,
                "bytes_total": self.bytes_total,
                "layers_quantized": self.layers_quantized,
                "layers_total": self.layers_total,
            }
        )


# ---------------------------------------------------------------------------- loading


def _return_freed_memory_promptly() -> None:
    """glibc raises its mmap threshold after large frees, so later tensor-sized buffers come from
    the heap and stay in the process after they are freed; pinning the threshold at 1 MiB keeps the
    peak at one tensor in flight (measured: 186 -> 107 MB peak on a 213 MB checkpoint). Windows'
    heap returns large blocks on its own."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _wanted(name: str, vision: bool) -> bool:
    return vision or not any(part in name for part in VISION_PARTS)


def load_model_streaming(
    folder: Path,
    *,
    quantization: str,
    device: str,
    vision: bool = False,
    progress: ProgressFn | None = None,
    dtype: torch.dtype | None = None,
):
    """Loads a DiffusionGemma checkpoint folder tensor by tensor into NF4 (or nf4-double) on `device`.

    Text linears and MoE experts are quantized as they are read; embeddings, routers and norms stay
    in `dtype` (bf16 on CUDA, the checkpoint's dtype on the CPU). `progress` receives dicts with the
    fields of `engine.protocol.LoadProgress` (stage, message, fraction, bytes_read, bytes_total,
    layers_quantized, layers_total).
    """
    from transformers import AutoConfig

    folder = Path(folder)
    settings = settings_for(quantization)
    _return_freed_memory_promptly()
    target_device = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    config = AutoConfig.from_pretrained(str(folder))
    dtype = dtype or load_dtype(config, target_device)
    model = build_meta_model(config, vision=vision)
    targets = plan_targets(model, quantize=True)
    entries = [e for e in checkpoint_entries(folder) if _wanted(e.name, vision)]
    layers_total = len({id(t) for t in targets.values() if t.kind in ("linear", "experts")})
    reporter = LoadProgressReporter(progress, sum(e.nbytes for e in entries), layers_total, folder.name)
    reporter.report("weights", f"Reading {folder.name} ({reporter.bytes_total / 1e9:.1f} GB)", force=True)
    done: set[int] = set()
    reader = ShardReader()
    started = time.perf_counter()
    try:
        for entry in entries:
            target = targets.get(entry.name)
            if target is None:
                log.warning("ignoring %s: the model has no such weight", entry.name)
                reporter.bytes_read += entry.nbytes
                continue
            check_shape(entry, target)
            if id(target) in done:  # a tied copy stored twice: the first one already serves every alias
                reporter.bytes_read += entry.nbytes
                continue
            _load_entry(model, reader, entry, target, settings, target_device, dtype, reporter)
            done.add(id(target))
    finally:
        reader.close()
    generation_config(model, folder)
    model = finish_model(model, target_device, dtype, quantized=True)
    reporter.report(
        "quantizing",
        f"Quantized {reporter.layers_quantized} layers to {settings.name} in {time.perf_counter() - started:.1f} s",
        force=True,
    )
    return model


def _load_entry(model, reader: ShardReader, entry: TensorEntry, target: _Target, settings: QuantSettings,
                device: torch.device, dtype: torch.dtype, reporter: LoadProgressReporter) -> None:
    if target.kind == "experts":
        rows = entry.shape[0]
        reporter.report("quantizing", f"Quantizing {entry.name}")

        def read_rows(start: int, stop: int) -> torch.Tensor:
            tensor = reader.read(entry, (start, stop))
            reporter.bytes_read += tensor.numel() * tensor.element_size()
            reporter.report("quantizing", f"Quantizing {entry.name} (experts {start}-{stop - 1} of {rows})")
            return tensor.to(dtype)

        value = NF4ExpertWeight.quantize(read_rows, entry.shape, settings, device, dtype, chunk_experts=EXPERT_READ_CHUNK)
        reporter.layers_quantized += 1
    elif target.kind == "linear":
        tensor = reader.read(entry)
        reporter.bytes_read += entry.nbytes
        value = quantize_linear(tensor.to(dtype), settings, device, dtype)
        reporter.layers_quantized += 1
        reporter.report("quantizing", f"Quantized {entry.name}")
    else:
        tensor = reader.read(entry)
        reporter.bytes_read += entry.nbytes
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.to(device)
        value = nn.Parameter(tensor, requires_grad=False) if target.kind == "tensor" else tensor
        reporter.report("weights", f"Read {entry.name}")
    install(model, target, value)


def generation_config(model, folder: Path) -> None:
    if not (folder / "generation_config.json").is_file():
        return
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

    try:
        model.generation_config = DiffusionGemmaGenerationConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        log.warning("keeping the default generation config: %s", exc)


def iter_model_tensors(model: nn.Module) -> Iterator[tuple[str, str, Any]]:
    """(canonical name, kind, value) for every unique weight of a loaded model; the canonical name is
    the one a checkpoint stores (decoder side for tied text weights)."""
    import bitsandbytes as bnb

    seen: set[int] = set()
    modules = list(model.named_modules(remove_duplicate=False))
    # Prefer decoder names: the checkpoint format stores the decoder's copy of tied weights.
    modules.sort(key=lambda item: 0 if ".decoder." in f".{item[0]}." or item[0].startswith("model.decoder") else 1)
    for name, module in modules:
        if isinstance(module, bnb.nn.Linear4bit):
            if id(module) not in seen:
                seen.add(id(module))
                yield f"{name}.weight", "linear4bit", module
            continue
        if isinstance(module, NF4ExpertWeight):
            if id(module) not in seen:
                seen.add(id(module))
                yield name, "nf4_experts", module
            continue
        for attr, param in module._parameters.items():
            if param is not None and id(param) not in seen:
                seen.add(id(param))
                yield f"{name}.{attr}", "tensor", param
        for attr, buffer in module._buffers.items():
            if buffer is None or attr in module._non_persistent_buffers_set or isinstance(module, NF4ExpertWeight):
                continue
            if id(buffer) not in seen:
                seen.add(id(buffer))
                yield f"{name}.{attr}", "buffer", buffer
