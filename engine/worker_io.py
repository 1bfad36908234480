"""The worker's two IO threads and what they share with its loop: the request reader, the event
writer (drafts coalesce, latest wins, while the pipe is slow) and the registry of cancelled requests.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from engine import protocol as p

log = logging.getLogger("canvas_chat.engine.worker")


@dataclass(frozen=True)
class DeferredDraft:
    """A draft whose text is decoded by the writer thread, and only if no newer draft replaced it."""

    request_id: str
    canvas_index: int
    build: Callable[[], p.Draft]


def _draft_kind(event: Any) -> type | None:
    """Drafts that supersede each other: a deferred draft is a Draft not yet decoded."""
    if isinstance(event, DeferredDraft):
        return p.Draft
    return type(event) if isinstance(event, (p.Draft, p.SpanDraft)) else None


class EventChannel:
    """Writes events on a thread of its own; a newer draft replaces one not yet written.

    An event that cannot be encoded is replaced by an error for its request. When the stream
    itself fails (the GUI is gone or its pipe broke) nothing more can be said: `on_failure` is
    called once so the loop stops instead of serving a GUI that cannot hear it.
    """

    def __init__(self, stream: IO[str], on_failure: Callable[[str], None] = lambda reason: None):
        self._stream = stream
        self._on_failure = on_failure
        self._pending: deque[Any] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._thread.start()

    def send(self, event: Any) -> None:
        with self._condition:
            if self._closed:
                return
            last = self._pending[-1] if self._pending else None
            if (
                _draft_kind(event) is not None
                and _draft_kind(last) is _draft_kind(event)
                and last.request_id == event.request_id
                and last.canvas_index == event.canvas_index
            ):
                self._pending[-1] = event  # latest wins: the superseded draft is never shown
            else:
                self._pending.append(event)
            self._condition.notify()

    def write_raw(self, line: str) -> None:
        """For the garbage-on-stdout test switch only."""
        with self._condition:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self, timeout: float = 5.0) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                with self._condition:
                    while not self._pending and not self._closed:
                        self._condition.wait()
                    if not self._pending and self._closed:
                        return
                    event = self._pending.popleft()
                line = _encode_for_the_wire(event)
                try:
                    self._stream.write(line + "\n")
                    self._stream.flush()
                except Exception as exc:
                    self._fail(f"its event stream failed ({exc!r})")
                    return
        except BaseException as exc:
            log.critical("the event writer failed", exc_info=True)
            self._fail(f"its event writer failed ({exc!r})")
            raise

    def _fail(self, reason: str) -> None:
        with self._condition:
            self._closed = True
            self._pending.clear()
        log.critical("the engine can no longer answer the GUI: %s", reason)
        self._on_failure(reason)


def _encode_for_the_wire(event: Any) -> str:
    """One protocol line for `event`, or an error for its request when it cannot be encoded."""
    try:
        if isinstance(event, DeferredDraft):
            event = event.build()  # token decoding here, off the generation thread
        line = p.encode(event)
    except Exception as exc:
        log.exception("an event could not be encoded: %.200r", event)
        return p.encode(
            p.Error(
                str(getattr(event, "request_id", "")),
                "internal",
                "The engine produced an answer it could not send; try again.",
                recoverable=True,
                detail=repr(exc)[:500],
            )
        )
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate would break the write itself
        line = line.encode("utf-8", "replace").decode("utf-8")
    return line


class CancelRegistry:
    """Which requests have been cancelled; shared by the reader thread and the loop."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        self.everything = threading.Event()  # stdin closed: stop whatever runs

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._cancelled.add(request_id)

    def is_cancelled(self, request_id: str) -> bool:
        if self.everything.is_set():
            return True
        with self._lock:
            return request_id in self._cancelled

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._cancelled.discard(request_id)


@dataclass(frozen=True)
class IoFailure:
    """Queued for the loop when a reader or writer thread died: the worker must exit."""

    reason: str


def read_requests(
    stdin: IO[bytes], requests: queue.Queue, cancels: CancelRegistry, emit, on_eof: Callable[[], None] = lambda: None
) -> None:
    """Reader thread: decodes lines; cancels act at once, everything else is queued in order.

    A line it cannot read, for whatever reason, is answered with `malformed_message` and
    skipped; if reading itself fails the loop is told, so the worker exits instead of going deaf.
    At stdin's end, whatever runs is cancelled (it stops after its current step) and `on_eof` is called.
    """
    try:
        while True:
            raw = stdin.readline(p.MAX_LINE_BYTES + 1)
            if not raw:
                break
            if len(raw) > p.MAX_LINE_BYTES and not raw.endswith(b"\n"):
                _skip_rest_of_line(stdin)
                _refuse_line(emit, "", f"a line longer than {p.MAX_LINE_BYTES // 2**20} MiB")
                continue
            line = raw.strip()
            if not line:
                continue
            try:
                request = p.decode(line, p.REQUEST_TYPES)
            except Exception as exc:  # ProtocolError, and anything a hostile line might still raise
                _refuse_line(emit, p.request_id_of(line), str(exc) if isinstance(exc, p.ProtocolError) else repr(exc))
                continue
            if isinstance(request, p.Cancel):
                cancels.cancel(request.target_request_id)
                continue
            requests.put(request)
    except BaseException as exc:
        log.critical("the request reader failed", exc_info=True)
        cancels.everything.set()
        requests.put(IoFailure(f"it could no longer read requests ({exc!r})"))
        return
    log.info("stdin closed: the GUI is gone, shutting down")
    cancels.everything.set()
    requests.put(None)
    on_eof()


def _skip_rest_of_line(stdin: IO[bytes]) -> None:
    while True:
        chunk = stdin.readline(2**20)
        if not chunk or chunk.endswith(b"\n"):
            return


def _refuse_line(emit, request_id: str, reason: str) -> None:
    log.warning("dropped a malformed request: %.300s", reason)
    emit(p.Error(request_id, "malformed_message", f"The engine could not read a request ({reason:.300}).", recoverable=True))
