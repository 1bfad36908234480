"""Checks a model folder: the GUI before it offers one ("Use a local folder"), the worker before it loads one.

Standard library only: reads config.json, the shard index, each safetensors header and the
tokenizer files, and names the first problem in words the user can act on, with the protocol's
error codes (`model_not_found`, `model_broken`, `wrong_model_type`, `tokenizer_missing`).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.hub import INDEX_NAME

SUPPORTED_MODEL_TYPE = "diffusion_gemma"
SINGLE_WEIGHTS_NAME = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# A safetensors header is JSON of a few hundred KB at most; anything huge is a damaged file.
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class FolderCheck:
    folder: Path
    ok: bool
    code: str  # "ok" or a protocol error code
    message: str  # one plain sentence or two
    weight_files: list[str] = field(default_factory=list)
    weight_bytes: int = 0
    tensors: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # the parsed config.json when ok


class _Problem(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def check_model_folder(folder: str | Path) -> FolderCheck:
    """Validates `folder` as a DiffusionGemma model; never raises for a bad folder."""
    folder = Path(folder).expanduser()
    try:
        return _check(folder)
    except _Problem as problem:
        return FolderCheck(folder, False, problem.code, problem.message)


def _check(folder: Path) -> FolderCheck:
    if not folder.exists():
        raise _Problem("model_not_found", f"The folder {folder} does not exist.")
    if not folder.is_dir():
        raise _Problem("model_not_found", f"{folder} is a file: choose the folder that holds the model.")
    config = _read_config(folder)
    model_type = config.get("model_type")
    if model_type != SUPPORTED_MODEL_TYPE:
        found = f"a {model_type} model" if isinstance(model_type, str) and model_type else "not a model this app knows"
        raise _Problem(
            "wrong_model_type",
            f"{folder.name} is {found} (config.json says model_type = {model_type!r}); "
            f"Canvas Chat runs DiffusionGemma models ({SUPPORTED_MODEL_TYPE}) only.",
        )
    shards = _weight_files(folder)
    tensors = 0
    total = 0
    for name in shards:
        count, size = _check_safetensors(folder / name)
        tensors += count
        total += size
    _check_tokenizer(folder)
    message = (
        f"DiffusionGemma model with {len(shards)} weight file{'s' if len(shards) != 1 else ''} "
        f"({_format_size(total)}, {tensors:,} tensors) and a tokenizer with a chat template."
    )
    return FolderCheck(
        folder, True, "ok", message, weight_files=shards, weight_bytes=total, tensors=tensors, config=config
    )


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise _Problem("model_broken", f"{folder.name} has no config.json, so it is not a model folder.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Problem("model_broken", f"config.json in {folder.name} cannot be read ({_short(exc)}).") from None
    if not isinstance(config, dict):
        raise _Problem("model_broken", f"config.json in {folder.name} is not a JSON object.")
    return config


def _weight_files(folder: Path) -> list[str]:
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _Problem("model_broken", f"{INDEX_NAME} in {folder.name} cannot be read ({_short(exc)}).") from None
        if not shards or not all(isinstance(name, str) for name in shards):
            raise _Problem("model_broken", f"{INDEX_NAME} in {folder.name} lists no weight files.")
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise _Problem(
                "model_broken",
                f"{len(missing)} of the {len(shards)} weight files listed in {INDEX_NAME} are missing "
                f"({listed}): the download is incomplete.",
            )
        return shards
    if (folder / SINGLE_WEIGHTS_NAME).is_file():
        return [SINGLE_WEIGHTS_NAME]
    raise _Problem(
        "model_broken", f"{folder.name} has no weights: neither {SINGLE_WEIGHTS_NAME} nor {INDEX_NAME} is there."
    )


def _check_safetensors(path: Path) -> tuple[int, int]:
    """(tensor count, file size) after checking the header and that the data is all there."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as source:
            prefix = source.read(8)
            if len(prefix) < 8:
                raise _Problem("model_broken", f"{path.name} is empty or cut short: it is not a safetensors file.")
            (header_length,) = struct.unpack("<Q", prefix)
            if header_length > min(MAX_HEADER_BYTES, size - 8):
                raise _Problem("model_broken", f"The header of {path.name} is unreadable: it is not a safetensors file.")
            header = json.loads(source.read(header_length).decode("utf-8"))
    except _Problem:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _Problem("model_broken", f"The header of {path.name} is unreadable ({_short(exc)}).") from None
    if not isinstance(header, dict):
        raise _Problem("model_broken", f"The header of {path.name} is unreadable: it is not a JSON object.")
    end = 0
    count = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = entry["data_offsets"]
            end = max(end, int(stop))
        except (KeyError, TypeError, ValueError):
            raise _Problem("model_broken", f"The header of {path.name} is unreadable (tensor {name!r}).") from None
        count += 1
    if 8 + header_length + end > size:
        raise _Problem(
            "model_broken",
            f"{path.name} is cut short ({_format_size(size)} of {_format_size(8 + header_length + end)}): "
            "the download is incomplete.",
        )
    return count, size


def _check_tokenizer(folder: Path) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise _Problem("tokenizer_missing", f"{folder.name} has no tokenizer (tokenizer.json is missing).")
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return
    try:
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        tokenizer_config = {}
    if not (isinstance(tokenizer_config, dict) and tokenizer_config.get("chat_template")):
        raise _Problem(
            "tokenizer_missing", f"The tokenizer in {folder.name} has no chat template, so it cannot hold a conversation."
        )


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "…"


def _format_size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
