"""The real model's hub id and name, and where the Hugging Face cache keeps a repository's files.

Standard library only: the GUI, the download child and the worker read these facts from here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REAL_MODEL_ID = "google/diffusiongemma-26B-A4B-it"
REAL_MODEL_NAME = "DiffusionGemma 26B-A4B"
# The whole checkpoint (bf16 safetensors shards, tokenizer, configs) as the Hub stores it.
DOWNLOAD_BYTES_ESTIMATE = 52_000_000_000
INDEX_NAME = "model.safetensors.index.json"


def hub_cache_dir() -> Path:
    """Where the Hugging Face cache puts downloads: huggingface_hub's rule, read from the
    environment now (its constants are fixed when it is first imported)."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(str(Path.home()), ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def repo_storage_dir(repo_id: str, cache_dir: Path | None = None) -> Path:
    """The cache folder of one repository (`models--owner--name`: blobs/, snapshots/, refs/)."""
    return (cache_dir or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def hub_origin(folder: Path) -> tuple[str | None, str | None]:
    """(repo id, revision) when `folder` is a Hugging Face cache snapshot, else (None, None)."""
    parts = Path(folder).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/"), parts[-1]
    return None, None


def cached_config(repo_id: str, cache_dir: Path | None = None) -> Path | None:
    """config.json of a download already in the local cache (the `main` ref first, else the newest)."""
    if repo_id.count("/") != 1:
        return None
    storage = repo_storage_dir(repo_id, cache_dir)
    snapshots = storage / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = storage / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip() / "config.json"
        if candidate.is_file():
            return candidate
    for snapshot in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        if (snapshot / "config.json").is_file():
            return snapshot / "config.json"
    return None


def real_model_downloaded(cache_dir: Path | None = None) -> bool:
    """True when a complete snapshot of the real model (config, all shards, tokenizer) is cached."""
    snapshots = repo_storage_dir(REAL_MODEL_ID, cache_dir) / "snapshots"
    for snapshot in sorted(snapshots.glob("*")) if snapshots.is_dir() else []:
        if not (snapshot / "config.json").is_file() or not (snapshot / "tokenizer.json").is_file():
            continue
        try:
            shards = set(json.loads((snapshot / INDEX_NAME).read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if shards and all((snapshot / shard).is_file() for shard in shards):
            return True
    return False
