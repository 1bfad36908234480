"""What a download fetches: the repository's files with sizes and hashes, where each goes in the
Hugging Face cache, and whether the disk has room. No Qt; huggingface_hub only when asked."""

from __future__ import annotations

import fnmatch
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from app.setup.download_events import DownloadErrorCode, format_bytes
from engine.hub import hub_cache_dir, repo_storage_dir
from engine.hub_cache import PARTIAL_SUFFIX
from engine.machine import existing_folder

# Keep some room after the download: a full disk breaks far more than this app.
DISK_MARGIN_BYTES = 1 << 30
DISK_MARGIN_FRACTION = 0.02
# Test-only switch of the child process (like the worker's CANVAS_CHAT_TEST_*).
TEST_DISK_FREE_ENV = "CANVAS_CHAT_TEST_DISK_FREE_BYTES"

# Files the engine never reads: other weight formats (a repo may carry them beside the
# safetensors) and the repo's own housekeeping. Everything else is fetched.
SKIPPED_FILES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "original/*", ".gitattributes")


class DownloadError(Exception):
    """A failure the user can act on: `code` for the GUI, `message` in plain words."""

    def __init__(self, code: DownloadErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RemoteFile:
    name: str  # path inside the repository, with forward slashes
    size: int
    git_oid: str  # the git blob id (sha1 of "blob <size>\0" + content)
    sha256: str | None  # set for LFS files

    @property
    def blob(self) -> str:
        """The file's name under blobs/ in the cache (what huggingface_hub calls its etag)."""
        return self.sha256 or self.git_oid


@dataclass
class DownloadPlan:
    repo_id: str
    revision: str
    commit: str
    cache_dir: Path
    files: list[RemoteFile] = field(default_factory=list)

    @property
    def storage(self) -> Path:
        return repo_storage_dir(self.repo_id, self.cache_dir)

    @property
    def snapshot(self) -> Path:
        return self.storage / "snapshots" / self.commit

    def blob_path(self, remote: RemoteFile) -> Path:
        return self.storage / "blobs" / remote.blob

    def partial_path(self, remote: RemoteFile) -> Path:
        return self.storage / "blobs" / (remote.blob + PARTIAL_SUFFIX)

    def pointer_path(self, remote: RemoteFile) -> Path:
        return self.snapshot.joinpath(*remote.name.split("/"))

    def is_complete(self, remote: RemoteFile) -> bool:
        """Already in the cache with the right size (as a blob, or moved into the snapshot)."""
        for path in (self.blob_path(remote), self.pointer_path(remote)):
            try:
                if path.is_file() and path.stat().st_size == remote.size:
                    return True
            except OSError:
                pass
        return False

    def partial_bytes(self, remote: RemoteFile) -> int:
        try:
            return min(self.partial_path(remote).stat().st_size, remote.size)
        except OSError:
            return 0

    @property
    def total_bytes(self) -> int:
        return sum(remote.size for remote in self.files)

    def present_bytes(self) -> int:
        return sum(r.size if self.is_complete(r) else self.partial_bytes(r) for r in self.files)


def fetch_plan(repo_id: str, revision: str = "main", *, token: str | None = None, cache_dir: Path | None = None) -> DownloadPlan:
    """Lists the repository's files with sizes and hashes (one API call to the Hub)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, token=token or None)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a DownloadError with a reason
        raise as_download_error(exc, repo_id) from None
    if not info.sha or info.siblings is None:
        raise DownloadError("bad_response", f"The Hub sent no file list for {repo_id}.")
    files = []
    for sibling in info.siblings:
        if any(fnmatch.fnmatch(sibling.rfilename, pattern) for pattern in SKIPPED_FILES):
            continue
        if sibling.size is None or not sibling.blob_id:
            raise DownloadError("bad_response", f"The Hub sent no size or hash for {sibling.rfilename}.")
        files.append(
            RemoteFile(
                name=sibling.rfilename,
                size=int(sibling.lfs.size if sibling.lfs else sibling.size),
                git_oid=sibling.blob_id,
                sha256=sibling.lfs.sha256 if sibling.lfs else None,
            )
        )
    return DownloadPlan(repo_id, revision, info.sha, Path(cache_dir or hub_cache_dir()), files)


def as_download_error(exc: BaseException, repo_id: str) -> DownloadError:
    from huggingface_hub import errors

    page = f"https://huggingface.co/{repo_id}"
    if isinstance(exc, errors.GatedRepoError):
        return DownloadError(
            "gated",
            f"{repo_id} is gated: accept its licence on {page} while signed in, then paste a "
            "Hugging Face access token with read access into the token field.",
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return DownloadError(
            "not_found",
            f"Hugging Face does not show {repo_id} to this token: check that the token is valid "
            f"and that you have accepted the licence on {page}.",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return DownloadError("not_found", f"{repo_id} has no such revision.")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return DownloadError("offline", "Hugging Face downloads are switched off (HF_HUB_OFFLINE is set).")
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            return DownloadError("unauthorized", f"Hugging Face refused the request (HTTP {status}): check the token.")
        return DownloadError("http_error", f"Hugging Face answered with an error (HTTP {status}). Try again later.")
    if is_network_error(exc):
        return DownloadError(
            "network", "Cannot reach Hugging Face: check the internet connection, then press Download again."
        )
    return DownloadError("failed", f"The download could not start ({type(exc).__name__}: {exc}).")


def is_network_error(exc: BaseException) -> bool:
    import httpx2

    return isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError))


# ---------------------------------------------------------------------------- disk


def free_disk_bytes(path: Path) -> int:
    override = os.environ.get(TEST_DISK_FREE_ENV)
    if override:
        return int(override)
    return shutil.disk_usage(existing_folder(path)).free


def check_disk(plan: DownloadPlan) -> tuple[int, int]:
    """(bytes still to fetch, free bytes); raises not_enough_disk before anything is fetched."""
    needed = sum(r.size - plan.partial_bytes(r) for r in plan.files if not plan.is_complete(r))
    free = free_disk_bytes(plan.cache_dir)
    margin = min(DISK_MARGIN_BYTES, int(needed * DISK_MARGIN_FRACTION)) if needed else 0
    if needed + margin > free:
        raise DownloadError(
            "not_enough_disk",
            f"Not enough free disk space: the download needs {format_bytes(needed + margin)} more, "
            f"but only {format_bytes(free)} is free on the drive of {plan.cache_dir}. "
            "Free some space, or set HF_HOME to a folder on a bigger drive and restart Canvas Chat.",
        )
    return needed, free


