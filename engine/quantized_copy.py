"""The quantized copy on disk: quantize a checkpoint once, keep it beside the user's models, reuse it.

A copy is a folder `<models dir>/<model name>-<quantization>[-vision]` holding the source's config
and tokenizer files, NF4 safetensors shards and `canvas_quantized.json`, the manifest: format
version, source (folder, hub repo and revision, fingerprint), quantization settings, library
versions and each file's size and SHA-256. The manifest is written last and the folder moved into
place in one rename, so a copy interrupted mid-write has no manifest and is never used. A copy whose
source or settings changed (stale), whose files are missing or cut short (partial) or whose bytes no
longer hash to the manifest (corrupted) is reported, deleted and rebuilt from the source; hashes are
checked while the copy is being read, and a model read from a bad copy is dropped before anyone
sees it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from engine import paths
from engine.errors import EngineError
from engine.hub import hub_origin
from engine.quantization import NF4ExpertWeight, linear_from_prequantized, settings_for
from engine.streaming_loader import (
    LoadProgressReporter,
    ProgressFn,
    ShardReader,
    TensorEntry,
    build_meta_model,
    file_entries,
    finish_model,
    generation_config,
    install,
    iter_model_tensors,
    load_dtype,
    load_model_streaming,
    plan_targets,
)

log = logging.getLogger("canvas_chat.engine.quantized_copy")

MANIFEST_NAME = "canvas_quantized.json"
COPY_FORMAT = 1
SHARD_BYTES = 2 * 1024**3
_HASH_BLOCK = 16 * 1024**2
# Small files of a model folder that travel with the copy (config, generation config, tokenizer).
_SIDE_FILE_SUFFIXES = (".json", ".jinja", ".model", ".txt")
_NOT_SIDE_FILES = ("model.safetensors.index.json", MANIFEST_NAME)


class CopyUnusable(Exception):
    """The copy on disk cannot be used (missing, partial, stale or corrupted); the reason says which."""


# ---------------------------------------------------------------------------- identity


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / name for name in names]
    return [folder / "model.safetensors"]


def source_identity(folder: Path) -> dict[str, Any]:
    """What the copy was made from. A hub snapshot is identified by its revision; a plain folder by
    its weight files' names, sizes and modification times (re-saving the model makes copies stale)."""
    folder = Path(folder)
    repo, revision = hub_origin(folder)
    digest = hashlib.sha256()
    config = folder / "config.json"
    digest.update(config.read_bytes() if config.is_file() else b"")
    for path in _weight_files(folder):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}".encode())
        if revision is None:
            digest.update(f":{stat.st_mtime_ns}".encode())
    return {
        "folder": str(folder.resolve()),
        "repo": repo,
        "revision": revision,
        "fingerprint": digest.hexdigest(),
    }


def copy_folder_for(source: Path, copies_dir: Path, quantization: str, vision: bool) -> Path:
    repo, _ = hub_origin(Path(source))
    name = repo.split("/")[-1] if repo else Path(source).resolve().name
    return Path(copies_dir) / f"{name}-{quantization}{'-vision' if vision else ''}"


def _versions() -> dict[str, str]:
    import bitsandbytes
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "bitsandbytes": bitsandbytes.__version__}


def _expected(quantization: str, vision: bool, identity: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": COPY_FORMAT,
        "quantization": settings_for(quantization).to_dict(),
        "vision": vision,
        "fingerprint": identity["fingerprint"],
    }


# ---------------------------------------------------------------------------- checking


def read_manifest(copy_dir: Path) -> dict[str, Any]:
    path = copy_dir / MANIFEST_NAME
    if not copy_dir.is_dir():
        raise CopyUnusable("there is no quantized copy yet")
    if not path.is_file():
        raise CopyUnusable("it has no manifest (an earlier save was interrupted)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CopyUnusable(f"its manifest cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CopyUnusable("its manifest is malformed")
    return manifest


def check_copy(copy_dir: Path, *, quantization: str, vision: bool, identity: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a usable copy; raises CopyUnusable with the reason otherwise. File hashes are
    checked later, while the weights are read (see `load_quantized_copy`)."""
    manifest = read_manifest(copy_dir)
    expected = _expected(quantization, vision, identity)
    if manifest.get("format") != COPY_FORMAT:
        raise CopyUnusable(f"it was written in format {manifest.get('format')!r}, this version reads {COPY_FORMAT}")
    if manifest.get("quantization") != expected["quantization"] or manifest.get("vision") != vision:
        raise CopyUnusable("it was made with different quantization settings")
    if manifest.get("source", {}).get("fingerprint") != expected["fingerprint"]:
        raise CopyUnusable("the source model changed since it was made (stale copy)")
    for name, info in manifest["files"].items():
        path = copy_dir / name
        if not path.is_file():
            raise CopyUnusable(f"{name} is missing (partial copy)")
        size = path.stat().st_size
        if size != info.get("size"):
            raise CopyUnusable(f"{name} is {size:,} bytes instead of {info.get('size'):,} (truncated or altered)")
    return manifest


class _HashingReader(ShardReader):
    """A ShardReader that hashes each file as it is read in order and checks it against the manifest."""

    def __init__(self, files: dict[str, dict[str, Any]], folder: Path):
        super().__init__()
        self._expected = files
        self._folder = folder
        self._hashers: dict[Path, Any] = {}
        self._position: dict[Path, int] = {}
        self.verified: set[Path] = set()

    def start_file(self, path: Path, header_end: int) -> None:
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            hasher.update(handle.read(header_end))
        self._hashers[path] = hasher
        self._position[path] = header_end

    def read(self, entry: TensorEntry, rows: tuple[int, int] | None = None) -> torch.Tensor:
        tensor = super().read(entry, rows)
        start = entry.start if rows is None else entry.start + rows[0] * (entry.nbytes // max(entry.shape[0], 1))
        path = entry.file
        if self._position.get(path) == start:
            self._hashers[path].update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            self._position[path] = start + tensor.numel() * tensor.element_size()
        else:
            self._position[path] = -1  # read out of order: fall back to hashing the whole file
        return tensor

    def verify(self, path: Path) -> None:
        expected = self._expected[path.name]["sha256"]
        if self._position.get(path, -1) == path.stat().st_size:
            actual = self._hashers[path].hexdigest()
        else:
            actual = sha256_file(path)
        if actual != expected:
            raise CopyUnusable(f"{path.name} does not match its recorded SHA-256 (corrupted)")
        self.verified.add(path)


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


# ---------------------------------------------------------------------------- loading a copy


def load_quantized_copy(copy_dir: Path, manifest: dict[str, Any], *, device: str, progress: ProgressFn | None = None):
    """Builds the model from a checked copy; raises CopyUnusable if a file fails its hash."""
    from transformers import AutoConfig

    target_device = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    config = AutoConfig.from_pretrained(str(copy_dir))
    dtype = load_dtype(config, target_device)
    model = build_meta_model(config, vision=bool(manifest.get("vision")))
    targets = plan_targets(model, quantize=True)
    tensors: dict[str, dict[str, Any]] = manifest["tensors"]
    weight_files = [name for name in manifest["files"] if name.endswith(".safetensors")]
    reader = _HashingReader(manifest["files"], copy_dir)
    entries: dict[str, TensorEntry] = {}
    bytes_total = 0
    try:
        for name in weight_files:
            path = copy_dir / name
            found = file_entries(path)
            reader.start_file(path, min((e.start for e in found), default=path.stat().st_size))
            entries.update({e.name: e for e in found})
            bytes_total += sum(e.nbytes for e in found)
        layers_total = sum(1 for info in tensors.values() if info["kind"] in ("linear4bit", "nf4_experts"))
        reporter = LoadProgressReporter(progress, bytes_total, layers_total, copy_dir.name)
        reporter.report("weights", f"Reading the quantized copy {copy_dir.name}", force=True)
        # Read in file order so that hashing runs alongside the reads.
        order = sorted(tensors.items(), key=lambda item: min((entries[k].file.name, entries[k].start) for k in item[1]["keys"]))
        current_file: Path | None = None
        for name, info in order:
            keys = info["keys"]
            first_file = min((entries[k].file.name, entries[k].start) for k in keys)[0]
            if current_file is not None and current_file.name != first_file and current_file not in reader.verified:
                reader.verify(current_file)
            current_file = copy_dir / first_file
            parts = {}
            for key in sorted(keys, key=lambda k: entries[k].start):
                parts[key] = reader.read(entries[key])
                reporter.bytes_read += entries[key].nbytes
            target = targets.get(name)
            if target is None:
                raise CopyUnusable(f"it holds {name}, which this model does not have")
            if info["kind"] == "linear4bit":
                prefix = name + "."
                stats = {k[len(prefix):]: v for k, v in parts.items() if k != name}
                value = linear_from_prequantized(parts[name], stats, target_device, dtype)
                reporter.layers_quantized += 1
            elif info["kind"] == "nf4_experts":
                value = NF4ExpertWeight.from_parts({k.rpartition(".")[2]: v for k, v in parts.items()}, info["meta"], target_device)
                reporter.layers_quantized += 1
            else:
                tensor = parts[name]
                if tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                tensor = tensor.to(target_device)
                value = torch.nn.Parameter(tensor, requires_grad=False) if info["kind"] == "tensor" else tensor
            install(model, target, value)
            reporter.report("weights", f"Read {name}")
        for name in weight_files:  # the last file, and any file that held nothing we read
            if copy_dir / name not in reader.verified:
                reader.verify(copy_dir / name)
    except (EngineError, KeyError, ValueError, RuntimeError) as exc:
        if isinstance(exc, CopyUnusable):
            raise
        raise CopyUnusable(f"it cannot be read ({type(exc).__name__}: {exc})") from None
    finally:
        reader.close()
    generation_config(model, copy_dir)
    try:
        model = finish_model(model, target_device, dtype, quantized=True)
    except EngineError as exc:
        raise CopyUnusable(exc.message) from None
    reporter.report("weights", f"Loaded the quantized copy {copy_dir.name}", force=True)
    return model


# ---------------------------------------------------------------------------- saving a copy


def save_quantized_copy(
    model,
    source: Path,
    copy_dir: Path,
    *,
    quantization: str,
    vision: bool,
    identity: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Writes `model` (already quantized) as a copy; atomic: the folder appears complete or not at all."""
    from safetensors.torch import save_file

    source = Path(source)
    copy_dir = Path(copy_dir)
    identity = identity or source_identity(source)
    copy_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in copy_dir.parent.glob(f".{copy_dir.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = copy_dir.parent / f".{copy_dir.name}.partial-{os.getpid()}"
    partial.mkdir()
    try:
        for path in sorted(source.iterdir()):
            if path.is_file() and path.name.endswith(_SIDE_FILE_SUFFIXES) and path.name not in _NOT_SIDE_FILES:
                shutil.copyfile(path, partial / path.name)
        tensors: dict[str, dict[str, Any]] = {}
        shards: list[dict[str, torch.Tensor]] = [{}]
        shard_bytes = 0
        for name, kind, value in iter_model_tensors(model):
            if kind == "linear4bit":
                state = value.state_dict()  # bitsandbytes undoes its CPU repacking here
                parts = {f"{name}" if key == "weight" else f"{name}.{key.removeprefix('weight.')}": t for key, t in state.items()}
                info: dict[str, Any] = {"kind": "linear4bit"}
            elif kind == "nf4_experts":
                parts = {f"{name}.{key}": t for key, t in value.parts().items()}
                info = {"kind": "nf4_experts", "meta": value.meta()}
            else:
                parts = {name: value.detach()}
                info = {"kind": kind}
            size = sum(t.numel() * t.element_size() for t in parts.values())
            if shard_bytes and shard_bytes + size > SHARD_BYTES:
                shards.append({})
                shard_bytes = 0
            shards[-1].update({k: t.detach().to("cpu").contiguous() for k, t in parts.items()})
            shard_bytes += size
            info["keys"] = sorted(parts)
            tensors[name] = info
        files: dict[str, dict[str, Any]] = {}
        total = len(shards)
        for index, shard in enumerate(shards, 1):
            file_name = f"model-{index:05d}-of-{total:05d}.safetensors"
            if progress is not None:
                progress({"stage": "saving", "message": f"Saving the quantized copy ({index}/{total})", "fraction": 0.97})
            save_file(shard, str(partial / file_name), metadata={"format": "pt", "canvas_quantized": str(COPY_FORMAT)})
            shards[index - 1] = {}
        for path in sorted(partial.iterdir()):
            files[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        manifest = {
            **_expected(quantization, vision, identity),
            "source": identity,
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tensors": tensors,
            "files": files,
        }
        (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if copy_dir.exists():
            shutil.rmtree(copy_dir)
        os.replace(partial, copy_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return copy_dir


# ---------------------------------------------------------------------------- the entry point


def load_quantized(
    source: Path,
    *,
    quantization: str,
    device: str,
    vision: bool = False,
    progress: ProgressFn | None = None,
    copies_dir: Path | None = None,
    save_copy: bool = True,
):
    """Loads `source` in NF4: from its quantized copy when a valid one exists, else streaming from the
    source (and then saving the copy for next time). `copies_dir` defaults to the user's models folder."""
    source = Path(source)
    copies_dir = Path(copies_dir) if copies_dir is not None else paths.models_dir()
    copy_dir = copy_folder_for(source, copies_dir, quantization, vision)
    identity = source_identity(source)
    reason = None
    try:
        manifest = check_copy(copy_dir, quantization=quantization, vision=vision, identity=identity)
        return load_quantized_copy(copy_dir, manifest, device=device, progress=progress)
    except CopyUnusable as exc:
        reason = str(exc)
    if copy_dir.exists():
        message = f"The quantized copy in {copy_dir} cannot be used: {reason}. Rebuilding it from {source.name}."
        log.warning(message)
        if progress is not None:
            progress({"stage": "quantizing", "message": message, "fraction": 0.1})
        shutil.rmtree(copy_dir, ignore_errors=True)
    else:
        log.info("no quantized copy of %s yet; quantizing from the source", source.name)
    model = load_model_streaming(source, quantization=quantization, device=device, vision=vision, progress=progress)
    if save_copy:
        try:
            needed = sum(p.stat().st_size for p in _weight_files(source)) // 3
            if shutil.disk_usage(copies_dir if copies_dir.exists() else copies_dir.parent).free < needed:
                log.warning("not saving a quantized copy: too little free disk space in %s", copies_dir)
            else:
                save_quantized_copy(model, source, copy_dir, quantization=quantization, vision=vision,
                                    identity=identity, progress=progress)
                log.info("saved the quantized copy in %s", copy_dir)
        except OSError as exc:
            log.warning("could not save the quantized copy in %s: %s", copy_dir, exc)
    return model
