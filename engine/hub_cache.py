"""The Hugging Face cache on disk: where it is, and the partial downloads left behind in it (stdlib only).

A download killed midway (ours or huggingface_hub's) leaves `blobs/<hash>.incomplete` files that
nothing ever removes. A download in progress holds a lock under `.locks/<repo folder>/`:
`canvas-chat-download.lock` (app.setup.download_child, one per repository) or `<hash>.lock`
(huggingface_hub, one per file). Those partials are never counted nor touched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.hub import hub_cache_dir

PARTIAL_SUFFIX = ".incomplete"
DOWNLOAD_LOCK_NAME = "canvas-chat-download.lock"  # app.setup.download_child holds it while it runs


@dataclass(frozen=True)
class PartialDownload:
    path: Path
    repo_folder: str  # "models--google--diffusiongemma-26B-A4B-it"
    size: int


@dataclass(frozen=True)
class Cleanup:
    removed: int
    freed_bytes: int
    failed: list[str]  # "path: reason" for files that could not be removed


def find_partial_downloads(cache_dir: Path | None = None) -> list[PartialDownload]:
    """Partial files no running download owns, in every repository of the cache."""
    cache = cache_dir if cache_dir is not None else hub_cache_dir()
    found = []
    for repo in _repo_folders(cache):
        with _repository_idle(cache, repo.name) as idle:
            if not idle:
                continue
            for path in _partials(repo):
                with _file_idle(cache, repo.name, path) as file_idle:
                    if file_idle:
                        found.append(PartialDownload(path, repo.name, _size(path)))
    return found


def remove_partial_downloads(cache_dir: Path | None = None) -> Cleanup:
    """Deletes the partial files no running download owns; each under its download's locks."""
    cache = cache_dir if cache_dir is not None else hub_cache_dir()
    removed, freed, failed = 0, 0, []
    for repo in _repo_folders(cache):
        with _repository_idle(cache, repo.name) as idle:
            if not idle:
                continue
            for path in _partials(repo):
                with _file_idle(cache, repo.name, path) as file_idle:
                    if not file_idle:
                        continue
                    size = _size(path)
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        failed.append(f"{path}: {exc.strerror or exc}")
                        continue
                    removed += 1
                    freed += size
    return Cleanup(removed, freed, failed)


def _repo_folders(cache: Path) -> list[Path]:
    try:
        return sorted(p for p in cache.iterdir() if "--" in p.name and p.is_dir())
    except OSError:
        return []


def _partials(repo: Path) -> list[Path]:
    try:
        return sorted(p for p in (repo / "blobs").iterdir() if p.name.endswith(PARTIAL_SUFFIX) and p.is_file())
    except OSError:
        return []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@contextlib.contextmanager
def _repository_idle(cache: Path, repo_folder: str) -> Iterator[bool]:
    """Holds our downloader's lock for the repository while the caller looks; False when it is busy."""
    lock_dir = cache / ".locks" / repo_folder
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield False  # a cache we cannot lock is one we must not clean
        return
    with _held(lock_dir / DOWNLOAD_LOCK_NAME, create=True) as held:
        yield held


@contextlib.contextmanager
def _file_idle(cache: Path, repo_folder: str, partial: Path) -> Iterator[bool]:
    """huggingface_hub's per-file lock, when it has one for this partial."""
    lock = cache / ".locks" / repo_folder / (partial.name[: -len(PARTIAL_SUFFIX)] + ".lock")
    if not lock.exists():
        yield True
        return
    with _held(lock, create=False) as held:
        yield held


@contextlib.contextmanager
def _held(lock_path: Path, *, create: bool) -> Iterator[bool]:
    """Tries the same OS lock `filelock` takes (flock on POSIX, msvcrt.locking on Windows), without waiting."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(lock_path, flags, 0o644)
    except OSError:
        yield False
        return
    try:
        if not _try_lock(fd):
            yield False
            return
        try:
            yield True
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


if os.name == "nt":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
