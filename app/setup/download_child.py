"""`python -m app.setup.download_child`: downloads a model from the Hugging Face Hub into the standard
Hugging Face cache, resumably. No Qt: `app.setup.download.ModelDownload` supervises it.

It prints one `app.setup.download_events` message per line on stdout and reads `pause` or
`cancel` on stdin; end of stdin means the GUI has gone, which counts as pause.

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
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from app.setup.download_events import (
    DownloadCancelled,
    DownloadDone,
    DownloadEvent,
    DownloadFailed,
    DownloadPaused,
    DownloadPlanned,
    DownloadProgress,
    StageChanged,
)
from app.setup.download_plan import (
    DownloadError,
    DownloadPlan,
    RemoteFile,
    as_download_error,
    is_network_error,
    check_disk,
    fetch_plan,
)
from app.setup.file_checks import FileDigest, VerifiedFiles, verified_record_path
from engine import protocol
from engine.hub import REAL_MODEL_ID
from engine.hub_cache import DOWNLOAD_LOCK_NAME

log = logging.getLogger("canvas_chat.download")

HASH_BLOCK_BYTES = 8 << 20
PROGRESS_INTERVAL_S = 0.1
RATE_WINDOW_S = 5.0
MAX_ATTEMPTS_WITHOUT_PROGRESS = 5
# Test-only switch of the child process (like the worker's CANVAS_CHAT_TEST_*).
TEST_RETRY_WAIT_ENV = "CANVAS_CHAT_TEST_RETRY_WAIT_S"

Emit = Callable[[DownloadEvent], None]


class StopRequested(Exception):
    """Raised inside the transfer loop when the GUI asked to pause or cancel."""

    def __init__(self, action: str):
        super().__init__(action)
        self.action = action


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
            DownloadProgress(
                stage=stage,
                file=current_file,
                done_bytes=self._done,
                total_bytes=total,
                rate_bps=rate,
                eta_s=(remaining / rate) if rate > 0 and stage == "downloading" else None,
            )
        )

    # -- the whole run

    def run(self) -> Path:
        plan = self.plan
        needed, free = check_disk(plan)
        reused = [r for r in plan.files if plan.is_complete(r)]
        self.emit(
            DownloadPlanned(
                repo_id=plan.repo_id,
                commit=plan.commit,
                files=len(plan.files),
                total_bytes=plan.total_bytes,
                present_bytes=plan.present_bytes(),
                needed_bytes=needed,
                free_bytes=free,
                reused_files=len(reused),
                partial_paths=[str(plan.partial_path(r)) for r in plan.files if not plan.is_complete(r)],
            )
        )
        self._done = sum(plan.partial_bytes(r) for r in plan.files if r not in reused)
        # Files already in the cache are checked first, so a damaged one is found before hours
        # of downloading rather than after.
        self._verify_reused(reused)
        self.emit(StageChanged("downloading", "Downloading"))
        for remote in plan.files:
            if remote not in reused:
                self._fetch(remote)
        self.emit(StageChanged("finalizing", "Putting the files in place"))
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
                self.emit(StageChanged("downloading", f"Connection lost, retrying ({retry.reason})"))
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

    def _transfer(self, remote: RemoteFile, partial: Path, digest: FileDigest, have: int) -> int:
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
                        raise as_download_error(exc, self.plan.repo_id) from None
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

    def _new_digest(self, remote: RemoteFile) -> FileDigest:
        return FileDigest(remote)

    def _hash_file(
        self, path: Path, digest: FileDigest, remote: RemoteFile, *, stage: str, limit: int | None = None, count: bool = True
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

    def _check_digest(self, remote: RemoteFile, digest: FileDigest, path: Path) -> None:
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
        self.emit(StageChanged("verifying", "Checking the files already on disk"))
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


class _Retry(Exception):
    def __init__(self, reason: str, *, progressed: bool):
        super().__init__(reason)
        self.reason = reason
        self.progressed = progressed


# ---------------------------------------------------------------------------- child process


@contextlib.contextmanager
def _download_lock(plan: DownloadPlan):
    """One download of a repository at a time (two would append to the same partial files)."""
    from filelock import FileLock, Timeout

    lock_path = plan.cache_dir / ".locks" / plan.storage.name / DOWNLOAD_LOCK_NAME
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


def _print_event(event: DownloadEvent) -> None:
    sys.stdout.write(protocol.encode(event) + "\n")
    sys.stdout.flush()


def child_main(argv: list[str] | None = None) -> int:
    """`python -m app.setup.download_child --repo ID`: the download process the GUI supervises."""
    parser = argparse.ArgumentParser(prog="python -m app.setup.download_child")
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
        _print_event(StageChanged("resolving", f"Asking Hugging Face for the files of {args.repo}"))
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
            _print_event(DownloadCancelled())
        else:
            _print_event(DownloadPaused())
        return 0
    except DownloadError as exc:
        _print_event(DownloadFailed(exc.code, exc.message))
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the GUI, with the traceback on stderr
        log.exception("download failed")
        if is_network_error(exc):
            error = as_download_error(exc, args.repo)
            _print_event(DownloadFailed(error.code, error.message))
        else:
            _print_event(DownloadFailed("failed", f"The download failed ({type(exc).__name__}: {exc})."))
        return 1
    _print_event(DownloadDone(str(path), plan.commit))
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
