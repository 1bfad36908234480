"""Downloads a model from the Hugging Face Hub into the standard Hugging Face cache, resumably.

The transfer runs in a child process, `python -m app.model_download`, so the GUI thread never
waits on the network and a stuck connection can always be stopped. The child prints one JSON
event per line on stdout (`stage`, `plan`, `progress`, `done`, `paused`, `cancelled`, `error`) and
reads `pause` or `cancel` on stdin; end of stdin means the GUI has gone, which counts as pause.
`ModelDownload` is the thin Qt supervisor of that child.

Resumable across pauses, app restarts and dropped connections: each file is fetched with HTTP
Range requests into `blobs/<hash>.incomplete` in the cache (the name older huggingface_hub
versions resume from). Files the cache already holds are reused. Before the transfer the child
checks free disk space; after it, every file is checked against the Hub's metadata (size, and
the LFS sha256 or the git blob hash) before it enters the cache. Nothing but these requests
leaves the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)
from app.child_python import child_python
from engine.hub_cache import hub_cache_dir
from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

log = logging.getLogger("canvas_chat.download")

REAL_MODEL_ID = "google/diffusiongemma-26B-A4B-it"
HASH_BLOCK_BYTES = 8 << 20
PROGRESS_INTERVAL_S = 0.1
RATE_WINDOW_S = 5.0
MAX_ATTEMPTS_WITHOUT_PROGRESS = 5
# Keep some room after the download: a full disk breaks far more than this app.
DISK_MARGIN_BYTES = 1 << 30
DISK_MARGIN_FRACTION = 0.02
# Test-only switches of the child process (like the worker's CANVAS_CHAT_TEST_*).
TEST_DISK_FREE_ENV = "CANVAS_CHAT_TEST_DISK_FREE_BYTES"
TEST_RETRY_WAIT_ENV = "CANVAS_CHAT_TEST_RETRY_WAIT_S"

# Files the engine never reads: other weight formats (a repo may carry them beside the
# safetensors) and the repo's own housekeeping. Everything else is fetched.
SKIPPED_FILES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "original/*", ".gitattributes")

Emit = Callable[[dict[str, Any]], None]


class DownloadError(Exception):
    """A failure the user can act on: `code` for the GUI, `message` in plain words."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class StopRequested(Exception):
    """Raised inside the transfer loop when the GUI asked to pause or cancel."""

    def __init__(self, action: str):
        super().__init__(action)
        self.action = action


# ---------------------------------------------------------------------------- the plan


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
        return self.cache_dir / ("models--" + self.repo_id.replace("/", "--"))

    @property
    def snapshot(self) -> Path:
        return self.storage / "snapshots" / self.commit

    def blob_path(self, remote: RemoteFile) -> Path:
        return self.storage / "blobs" / remote.blob

    def partial_path(self, remote: RemoteFile) -> Path:
        return self.storage / "blobs" / (remote.blob + ".incomplete")

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
        raise _as_download_error(exc, repo_id) from None
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


def _as_download_error(exc: BaseException, repo_id: str) -> DownloadError:
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
    if _is_network_error(exc):
        return DownloadError(
            "network", "Cannot reach Hugging Face: check the internet connection, then press Download again."
        )
    return DownloadError("failed", f"The download could not start ({type(exc).__name__}: {exc}).")


def _is_network_error(exc: BaseException) -> bool:
    import httpx2

    return isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError))


# ---------------------------------------------------------------------------- disk


def free_disk_bytes(path: Path) -> int:
    override = os.environ.get(TEST_DISK_FREE_ENV)
    if override:
        return int(override)
    folder = Path(path).absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return shutil.disk_usage(folder).free


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


# ---------------------------------------------------------------------------- the transfer


class RateMeter:
    """Bytes per second over the last few seconds, for the rate and the time left."""

    def __init__(self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self._window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, count: int) -> None:
        self._total += count
        now = self._clock()
        self._samples.append((now, self._total))
        while len(self._samples) > 2 and now - self._samples[1][0] > self._window_s:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


class SnapshotDownload:
    """Fetches, verifies and links every file of a plan into the cache; plain Python, no Qt."""

    def __init__(
        self,
        plan: DownloadPlan,
        *,
        token: str | None = None,
        emit: Emit = lambda event: None,
        stop_request: Callable[[], str | None] = lambda: None,
        stop_event: threading.Event | None = None,
    ):
        self.plan = plan
        self.token = token or None
        self.emit = emit
        self.stop_request = stop_request
        self._stop_event = stop_event or threading.Event()
        self._meter = RateMeter()
        self._done = 0
        self._last_progress = 0.0
        self._retry_wait_s = float(os.environ.get(TEST_RETRY_WAIT_ENV, "1.0"))
        self._record = VerifiedFiles(verified_record_path())

    # -- events

    def _check_stop(self) -> None:
        action = self.stop_request()
        if action:
            raise StopRequested(action)

    def _progress(self, stage: str, current_file: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        total = self.plan.total_bytes
        rate = self._meter.rate()
        remaining = max(total - self._done, 0)
        self.emit(
            {
                "event": "progress",
                "stage": stage,
                "file": current_file,
                "done_bytes": self._done,
                "total_bytes": total,
                "rate_bps": rate,
                "eta_s": (remaining / rate) if rate > 0 and stage == "downloading" else None,
            }
        )

    # -- the whole run

    def run(self) -> Path:
        plan = self.plan
        needed, free = check_disk(plan)
        reused = [r for r in plan.files if plan.is_complete(r)]
        self.emit(
            {
                "event": "plan",
                "repo_id": plan.repo_id,
                "commit": plan.commit,
                "files": len(plan.files),
                "total_bytes": plan.total_bytes,
                "present_bytes": plan.present_bytes(),
                "needed_bytes": needed,
                "free_bytes": free,
                "reused_files": len(reused),
                "partial_paths": [str(plan.partial_path(r)) for r in plan.files if not plan.is_complete(r)],
            }
        )
        self._done = sum(plan.partial_bytes(r) for r in plan.files if r not in reused)
        # Files already in the cache are checked first, so a damaged one is found before hours
        # of downloading rather than after.
        self._verify_reused(reused)
        self.emit({"event": "stage", "stage": "downloading", "message": "Downloading"})
        for remote in plan.files:
            if remote not in reused:
                self._fetch(remote)
        self.emit({"event": "stage", "stage": "finalizing", "message": "Putting the files in place"})
        self._link_snapshot(reused)
        return plan.snapshot

    # -- one file

    def _fetch(self, remote: RemoteFile) -> None:
        plan = self.plan
        partial = plan.partial_path(remote)
        partial.parent.mkdir(parents=True, exist_ok=True)
        digest = self._new_digest(remote)
        have = plan.partial_bytes(remote)
        if partial.exists() and partial.stat().st_size > remote.size:
            partial.unlink()
            have = 0
        if have:
            # Resuming: the hash must cover the bytes fetched before (another run, maybe days ago).
            self._hash_file(partial, digest, remote, stage="checking", limit=have, count=False)
        attempts = 0
        while have < remote.size:
            self._check_stop()
            try:
                have = self._transfer(remote, partial, digest, have)
                attempts = 0
            except _Retry as retry:
                attempts = 0 if retry.progressed else attempts + 1
                if attempts >= MAX_ATTEMPTS_WITHOUT_PROGRESS:
                    raise DownloadError(
                        "network",
                        f"The connection to Hugging Face keeps dropping ({retry.reason}). "
                        "What arrived so far is kept: press Resume to continue.",
                    ) from None
                wait = min(self._retry_wait_s * 2 ** max(attempts - 1, 0), 8.0)
                log.warning("download of %s interrupted (%s); retrying in %.1f s", remote.name, retry.reason, wait)
                self.emit({"event": "stage", "stage": "downloading", "message": f"Connection lost, retrying ({retry.reason})"})
                if self._stop_event.wait(wait):
                    self._check_stop()
                have = plan.partial_bytes(remote)
                if have and partial.stat().st_size != have:
                    partial.unlink()  # longer than the file: start it over
                    have = 0
                if have != digest.bytes:
                    digest = self._new_digest(remote)
                    self._hash_file(partial, digest, remote, stage="checking", limit=have, count=False)
        self._progress("downloading", remote.name, force=True)
        self._check_digest(remote, digest, partial)
        os.replace(partial, plan.blob_path(remote))
        self._record.add(plan.blob_path(remote), remote)

    def _transfer(self, remote: RemoteFile, partial: Path, digest: _Digest, have: int) -> int:
        """One HTTP request from byte `have` on; returns the bytes now on disk or raises _Retry."""
        import httpx2
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session

        url = hf_hub_url(self.plan.repo_id, remote.name, revision=self.plan.commit, endpoint=constants.ENDPOINT)
        headers = build_hf_headers(token=self.token)
        headers["Accept-Encoding"] = "identity"
        if have:
            headers["Range"] = f"bytes={have}-"
        start = have
        try:
            with get_session().stream(
                "GET", url, headers=headers, timeout=httpx2.Timeout(60.0, connect=20.0)
            ) as response:
                status = response.status_code
                if status in (429, 500, 502, 503, 504):
                    raise _Retry(f"HTTP {status}", progressed=False)
                if status == 416 and have:
                    # Our partial file does not fit the server's: start this file over.
                    partial.unlink(missing_ok=True)
                    digest.reset()
                    self._done -= have
                    raise _Retry("range not satisfiable", progressed=True)
                if status >= 400:
                    from huggingface_hub.utils import hf_raise_for_status

                    response.read()
                    try:
                        hf_raise_for_status(response)
                    except Exception as exc:  # noqa: BLE001
                        raise _as_download_error(exc, self.plan.repo_id) from None
                mode = "ab"
                if have and status == 200:
                    # The server ignored the Range header and sends the whole file again.
                    mode = "wb"
                    self._done -= have
                    have = start = 0
                    digest.reset()
                with open(partial, mode) as out:
                    # No chunk_size: a buffered chunk would be lost when the connection drops.
                    for chunk in response.iter_bytes():
                        if not chunk:
                            continue
                        if have + len(chunk) > remote.size:
                            chunk = chunk[: remote.size - have]
                        out.write(chunk)
                        digest.update(chunk)
                        have += len(chunk)
                        self._done += len(chunk)
                        self._meter.add(len(chunk))
                        self._progress("downloading", remote.name)
                        if self.stop_request():
                            out.flush()
                            self._check_stop()
                        if have >= remote.size:
                            break
        except (httpx2.TransportError, ConnectionError, TimeoutError) as exc:
            raise _Retry(type(exc).__name__, progressed=have > start) from None
        if have < remote.size:
            raise _Retry("the connection closed early", progressed=have > start)
        return have

    # -- verification

    def _new_digest(self, remote: RemoteFile) -> _Digest:
        return _Digest(remote)

    def _hash_file(
        self, path: Path, digest: _Digest, remote: RemoteFile, *, stage: str, limit: int | None = None, count: bool = True
    ) -> None:
        left = path.stat().st_size if limit is None else limit
        with open(path, "rb") as source:
            while left > 0:
                self._check_stop()
                block = source.read(min(HASH_BLOCK_BYTES, left))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
                if count:
                    self._done += len(block)
                self._progress(stage, remote.name)

    def _check_digest(self, remote: RemoteFile, digest: _Digest, path: Path) -> None:
        size = path.stat().st_size
        problem = None
        if size != remote.size:
            problem = f"its size is {size} bytes instead of {remote.size}"
        elif not digest.matches():
            problem = "its checksum does not match the one Hugging Face lists"
        if problem:
            path.unlink(missing_ok=True)
            raise DownloadError(
                "corrupted",
                f"{remote.name} arrived damaged ({problem}). The damaged copy was deleted: "
                "press Download to fetch it again.",
            )

    def _verify_reused(self, reused: list[RemoteFile]) -> None:
        """Checks the files that were already in the cache before they are trusted.

        Files this app verified before (same size and modification time) are not hashed again,
        so a resumed download does not re-read tens of gigabytes.
        """
        unchecked = []
        for remote in reused:
            path = self._cached_path(remote)
            if self._record.covers(path, remote):
                self._done += remote.size
            else:
                unchecked.append((remote, path))
        if not unchecked:
            return
        self.emit({"event": "stage", "stage": "verifying", "message": "Checking the files already on disk"})
        for remote, path in unchecked:
            digest = self._new_digest(remote)
            self._hash_file(path, digest, remote, stage="verifying")
            self._progress("verifying", remote.name, force=True)
            if not digest.matches():
                if not path.is_symlink():
                    path.unlink(missing_ok=True)
                raise DownloadError(
                    "corrupted",
                    f"{remote.name} in the Hugging Face cache is damaged (its checksum does not match). "
                    "It was deleted: press Download to fetch it again.",
                )
            self._record.add(path, remote)

    def _cached_path(self, remote: RemoteFile) -> Path:
        blob = self.plan.blob_path(remote)
        return blob if blob.is_file() else self.plan.pointer_path(remote)

    # -- the cache layout

    def _link_snapshot(self, reused: list[RemoteFile]) -> None:
        """snapshots/<commit>/<file> -> blobs/<hash>, and refs/<revision>, as huggingface_hub does."""
        from huggingface_hub.file_download import _create_symlink  # same layout, same Windows fallback

        plan = self.plan
        reused_names = {r.name for r in reused}
        for remote in plan.files:
            pointer = plan.pointer_path(remote)
            blob = plan.blob_path(remote)
            if pointer.is_file() and (not blob.exists() or pointer.resolve() == blob.resolve()):
                continue
            pointer.parent.mkdir(parents=True, exist_ok=True)
            _create_symlink(str(blob), str(pointer), new_blob=remote.name not in reused_names)
        if plan.revision != plan.commit:
            ref = plan.storage / "refs" / plan.revision
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(plan.commit)


def verified_record_path() -> Path:
    from app import paths

    return paths.data_dir() / "verified-downloads.json"


class VerifiedFiles:
    """Which cached files this app has hashed already: {hash: [size, mtime_ns]}, in the data folder."""

    def __init__(self, path: Path):
        self.path = path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self._entries: dict[str, list[int]] = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self._entries = {}

    @staticmethod
    def _stamp(path: Path) -> list[int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return [stat.st_size, stat.st_mtime_ns]

    def covers(self, path: Path, remote: RemoteFile) -> bool:
        stamp = self._stamp(path)
        return stamp is not None and stamp[0] == remote.size and self._entries.get(remote.blob) == stamp

    def add(self, path: Path, remote: RemoteFile) -> None:
        stamp = self._stamp(path)
        if stamp is None:
            return
        self._entries[remote.blob] = stamp
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self._entries), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("could not record verified file %s: %s", path, exc)


class _Retry(Exception):
    def __init__(self, reason: str, *, progressed: bool):
        super().__init__(reason)
        self.reason = reason
        self.progressed = progressed


class _Digest:
    """The hash the Hub lists for a file: sha256 for LFS files, the git blob sha1 otherwise."""

    def __init__(self, remote: RemoteFile):
        self.remote = remote
        self.reset()

    def reset(self) -> None:
        self.bytes = 0
        if self.remote.sha256:
            self._hash = hashlib.sha256()
        else:
            self._hash = hashlib.sha1(f"blob {self.remote.size}\0".encode())

    def update(self, data: bytes) -> None:
        self._hash.update(data)
        self.bytes += len(data)

    def matches(self) -> bool:
        expected = self.remote.sha256 or self.remote.git_oid
        return self._hash.hexdigest() == expected.lower()


def format_bytes(count: float) -> str:
    """Sizes as Windows shows them (binary units, labelled KB/MB/GB)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(count) < 1024 or unit == "TB":
            if unit == "bytes":
                return f"{int(count)} bytes"
            return f"{count:.1f} {unit}" if count < 100 else f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.0f} TB"


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# ---------------------------------------------------------------------------- child process


@contextlib.contextmanager
def _download_lock(plan: DownloadPlan):
    """One download of a repository at a time (two would append to the same partial files)."""
    from filelock import FileLock, Timeout

    lock_path = plan.cache_dir / ".locks" / plan.storage.name / "canvas-chat-download.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DownloadError(
            "busy", "Another download of this model is already running (in another Canvas Chat window?)."
        ) from None
    try:
        yield
    finally:
        lock.release()


def _print_event(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def child_main(argv: list[str] | None = None) -> int:
    """`python -m app.model_download --repo ID`: the download process the GUI supervises."""
    parser = argparse.ArgumentParser(prog="python -m app.model_download")
    parser.add_argument("--repo", default=REAL_MODEL_ID)
    parser.add_argument("--revision", default="main")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    # No telemetry: without this, huggingface_hub fetches an "agent harness" registry and adds
    # environment details to the user agent. Must be set before huggingface_hub is imported.
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_DISABLE_TELEMETRY = True
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    token = os.environ.get("HF_TOKEN") or None

    requested: list[str] = []
    stop_event = threading.Event()

    def read_commands() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command in ("pause", "cancel"):
                requested.append(command)
                stop_event.set()
        requested.append("pause")  # the GUI has gone: keep what we have
        stop_event.set()

    threading.Thread(target=read_commands, name="commands", daemon=True).start()
    plan = None
    try:
        _print_event({"event": "stage", "stage": "resolving", "message": f"Asking Hugging Face for the files of {args.repo}"})
        plan = fetch_plan(args.repo, args.revision, token=token, cache_dir=Path(args.cache_dir) if args.cache_dir else None)
        download = SnapshotDownload(
            plan,
            token=token,
            emit=_print_event,
            stop_request=lambda: requested[0] if requested else None,
            stop_event=stop_event,
        )
        with _download_lock(plan):
            path = download.run()
    except StopRequested as stop:
        if stop.action == "cancel" and plan is not None:
            for remote in plan.files:
                plan.partial_path(remote).unlink(missing_ok=True)
            _print_event({"event": "cancelled"})
        else:
            _print_event({"event": "paused"})
        return 0
    except DownloadError as exc:
        _print_event({"event": "error", "code": exc.code, "message": exc.message})
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the GUI, with the traceback on stderr
        log.exception("download failed")
        if _is_network_error(exc):
            error = _as_download_error(exc, args.repo)
            _print_event({"event": "error", "code": error.code, "message": error.message})
        else:
            _print_event({"event": "error", "code": "failed", "message": f"The download failed ({type(exc).__name__}: {exc})."})
        return 1
    _print_event({"event": "done", "path": str(path), "commit": plan.commit})
    return 0


# ---------------------------------------------------------------------------- Qt supervisor


@dataclass(frozen=True)
class DownloadProgress:
    stage: str  # "checking", "downloading", "verifying"
    file: str
    done_bytes: int
    total_bytes: int
    rate_bps: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0

    def describe(self) -> str:
        """'1.2 GB of 48 GB · 35.0 MB/s · 23 min 10 s left'."""
        parts = [f"{format_bytes(self.done_bytes)} of {format_bytes(self.total_bytes)}"]
        if self.stage == "downloading":
            parts.append(f"{format_bytes(self.rate_bps)}/s" if self.rate_bps > 0 else "starting…")
            if self.eta_s is not None:
                parts.append(f"{format_duration(self.eta_s)} left")
        elif self.stage == "verifying":
            parts.append("checking files")
        elif self.stage == "checking":
            parts.append("checking the part downloaded before")
        return " · ".join(parts)


class ModelDownload(QObject):
    """Supervises one download process: start, pause, resume, cancel; events as signals.

    States: idle → running → (pausing → paused | cancelling → cancelled | done | failed);
    paused, cancelled and failed can start again (resume picks up the partial files).
    """

    state_changed = Signal(str)
    stage_changed = Signal(str, str)  # stage, message
    planned = Signal(dict)  # the child's plan event
    progressed = Signal(object)  # DownloadProgress
    finished = Signal(str)  # the snapshot folder
    failed = Signal(str, str)  # code, message
    paused = Signal()
    cancelled = Signal()

    STOP_GRACE_MS = 5000

    def __init__(
        self,
        repo_id: str = REAL_MODEL_ID,
        *,
        revision: str = "main",
        endpoint: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        extra_env: dict[str, str] | None = None,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.repo_id = repo_id
        self.revision = revision
        self.endpoint = endpoint
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.extra_env = dict(extra_env or {})
        self.state = "idle"
        self.last_progress: DownloadProgress | None = None
        self.last_plan: dict[str, Any] | None = None
        self.last_error: tuple[str, str] | None = None
        self.result_path: str | None = None
        self._token: str | None = None
        self._process: QProcess | None = None
        self._buffer = b""
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._terminal_event: str | None = None
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._on_kill_timer_timeout)

    # -- commands

    @property
    def is_running(self) -> bool:
        return self._process is not None

    def start(self, token: str | None = None) -> None:
        if self._process is not None:
            return
        self._token = (token or "").strip() or None
        self._terminal_event = None
        self.last_error = None
        self._buffer = b""
        self._stderr_tail.clear()
        process = QProcess(self)
        program, *args = self.command()
        process.setProgram(program)
        process.setArguments(args)
        process.setProcessEnvironment(self._environment())
        process.readyReadStandardOutput.connect(self._on_process_stdout)
        process.readyReadStandardError.connect(self._on_process_stderr)
        process.finished.connect(self._on_process_finished)
        process.errorOccurred.connect(self._on_process_error)
        self._process = process
        self._set_state("running")
        process.start()

    def command(self) -> list[str]:
        """The download process's command line; no console window on Windows."""
        command = [child_python(), "-m", "app.model_download", "--repo", self.repo_id, "--revision", self.revision]
        if self.cache_dir:
            command += ["--cache-dir", self.cache_dir]
        return command

    def resume(self) -> None:
        self.start(self._token)

    def pause(self) -> None:
        self._stop("pause")

    def cancel(self) -> None:
        if self._process is None:
            if self.state in ("paused", "failed"):
                self._delete_partials()
                self._set_state("cancelled")
                self.cancelled.emit()
            return
        self._stop("cancel")

    def shutdown(self, timeout_ms: int = 10000) -> None:
        """Pauses (keeping partial files) and waits for the process; for closing the app."""
        if self._process is None:
            return
        self._stop("pause")
        process = self._process
        if process is not None and not process.waitForFinished(timeout_ms):
            process.kill()
            process.waitForFinished(timeout_ms)

    # -- internals

    def _environment(self) -> QProcessEnvironment:
        env = QProcessEnvironment.systemEnvironment()
        # The user pressed Download: this process may go online even where the app otherwise
        # keeps huggingface_hub offline.
        env.insert("HF_HUB_OFFLINE", "0")
        env.insert("HF_HUB_DISABLE_TELEMETRY", "1")
        env.insert("PYTHONUNBUFFERED", "1")
        env.insert("PYTHONIOENCODING", "utf-8")
        root = str(Path(__file__).resolve().parent.parent)
        env.insert("PYTHONPATH", os.pathsep.join(filter(None, [root, env.value("PYTHONPATH", "")])))
        if self.endpoint:
            env.insert("HF_ENDPOINT", self.endpoint)
        if self._token:
            env.insert("HF_TOKEN", self._token)
        for key, value in self.extra_env.items():
            env.insert(key, value)
        return env

    def _stop(self, action: str) -> None:
        if self._process is None or self.state in ("pausing", "cancelling"):
            if action == "cancel" and self.state == "pausing":
                pass  # escalate a pause in flight to a cancel
            else:
                return
        self._set_state("cancelling" if action == "cancel" else "pausing")
        self._process.write(f"{action}\n".encode())
        self._kill_timer.start(self.STOP_GRACE_MS)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)

    def _delete_partials(self) -> None:
        for path in (self.last_plan or {}).get("partial_paths", []):
            try:
                Path(path).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not delete %s: %s", path, exc)

    def _on_kill_timer_timeout(self) -> None:
        if self._process is not None:
            log.warning("download process did not stop within %d ms; killing it", self.STOP_GRACE_MS)
            self._process.kill()

    def _on_process_stdout(self) -> None:
        if self._process is None:
            return
        self._buffer += bytes(self._process.readAllStandardOutput().data())
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("download process: not an event: %r", line[:200])
                continue
            if isinstance(event, dict):
                self._handle_event(event)

    def _handle_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            progress = DownloadProgress(
                stage=str(event.get("stage", "")),
                file=str(event.get("file", "")),
                done_bytes=int(event.get("done_bytes", 0)),
                total_bytes=int(event.get("total_bytes", 0)),
                rate_bps=float(event.get("rate_bps") or 0.0),
                eta_s=event.get("eta_s"),
            )
            self.last_progress = progress
            self.progressed.emit(progress)
        elif kind == "stage":
            self.stage_changed.emit(str(event.get("stage", "")), str(event.get("message", "")))
        elif kind == "plan":
            self.last_plan = event
            self.planned.emit(event)
        elif kind in ("done", "paused", "cancelled", "error"):
            self._terminal_event = kind
            if kind == "done":
                self.result_path = str(event.get("path", ""))
            elif kind == "error":
                self.last_error = (str(event.get("code", "failed")), str(event.get("message", "")))
        else:
            log.debug("download process: unknown event %r", kind)

    def _on_process_stderr(self) -> None:
        if self._process is None:
            return
        text = bytes(self._process.readAllStandardError().data()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip():
                self._stderr_tail.append(line)
                log.info("download: %s", line)

    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and self._process is not None:
            self._finish_process()
            self.last_error = ("failed", "The download process could not be started.")
            self._set_state("failed")
            self.failed.emit(*self.last_error)

    def _on_process_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        if self._process is None:
            return
        self._on_process_stdout()
        self._on_process_stderr()
        requested = self.state
        self._finish_process()
        event = self._terminal_event
        if event == "done":
            self._set_state("done")
            self.finished.emit(self.result_path or "")
        elif event == "cancelled" or requested == "cancelling":
            self._delete_partials()  # the process may have been killed before it could
            self._set_state("cancelled")
            self.cancelled.emit()
        elif event == "paused" or requested == "pausing":
            self._set_state("paused")
            self.paused.emit()
        else:
            if self.last_error is None:
                tail = "\n".join(list(self._stderr_tail)[-3:])
                self.last_error = (
                    "crashed",
                    f"The download stopped unexpectedly (exit status {exit_code}). "
                    "What arrived so far is kept: press Resume to continue." + (f"\n{tail}" if tail else ""),
                )
            self._set_state("failed")
            self.failed.emit(*self.last_error)

    def _finish_process(self) -> None:
        self._kill_timer.stop()
        process, self._process = self._process, None
        if process is not None:
            process.deleteLater()


if __name__ == "__main__":
    sys.exit(child_main())
