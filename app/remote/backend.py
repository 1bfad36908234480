"""`RemoteBackend`: replies from a remote OpenAI-compatible server, with the same calls and signals
as the local `EngineClient` (the `ChatBackend` the controller uses). Each reply streams
`/v1/chat/completions` with httpx in its own thread; events reach the GUI thread as Qt signals."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
from PySide6.QtCore import QObject, QTimer, Signal

import app.qt_compat  # noqa: F401  (PySide6 6.12 / CPython 3.11 refcount fix, before any emit)
from app.remote.chat_stream import ChatStreamReader, StreamFailed, http_error
from app.remote.server import RemoteServer
from engine.protocol import ChatMessage, Done, Error, GenerationSettings

log = logging.getLogger("canvas_chat.remote")

CONNECT_TIMEOUT_S = 15.0
# A server that sends nothing for this long has stalled: the reply ends as interrupted.
READ_TIMEOUT_S = 600.0
INTERRUPTED_TEXT = "The server connection was lost during this reply."


class _Stream(threading.Thread):
    """One reply: POSTs the request and reads SSE lines until the end, an error or cancel()."""

    def __init__(self, backend: RemoteBackend, request_id: str, server: RemoteServer, body: dict[str, Any]):
        super().__init__(name=f"remote-{request_id}", daemon=True)
        self._backend = backend
        self.request_id = request_id
        self._server = server
        self._body = body
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self.reader = ChatStreamReader(request_id)

    def cancel(self) -> None:
        """Closes the stream at once: shutting the socket down wakes the thread blocked on it."""
        self._cancelled.set()
        with self._lock:
            sock = self._socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def _post(self, kind: str, payload: object) -> None:
        if not self._cancelled.is_set():
            self._backend.stream_event.emit(self.request_id, kind, payload)

    def run(self) -> None:
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        began = False
        try:
            with httpx.Client(timeout=timeout) as client:
                with client.stream(
                    "POST", self._server.base_url + "/chat/completions", json=self._body, headers=self._server.headers()
                ) as response:
                    stream = response.extensions.get("network_stream")
                    with self._lock:
                        self._socket = stream.get_extra_info("socket") if stream is not None else None
                    if self._cancelled.is_set():
                        return
                    if response.status_code != 200:
                        response.read()
                        try:
                            body: Any = response.json()
                        except ValueError:
                            body = response.text
                        retry_after = response.headers.get("retry-after", "")
                        self._post("failed", http_error(self.request_id, response.status_code, body, retry_after))
                        return
                    began = True
                    for line in response.iter_lines():
                        if self._cancelled.is_set():
                            return
                        for commit in self.reader.feed(line):
                            self._post("commit", commit)
                        if self.reader.saw_done:
                            break
        except StreamFailed as exc:
            self._post("failed", Error(self.request_id, "internal", f"The server reported an error: {exc}", True))
            return
        except httpx.HTTPError as exc:
            if self._cancelled.is_set():
                return
            if began:
                log.info("remote stream %s broke: %s", self.request_id, exc)
                self._post("interrupted", str(exc))
            else:
                self._post("failed", Error(
                    self.request_id, "engine_stopped",
                    f"Cannot reach the server at {self._server.host}: {exc or type(exc).__name__}.", True,
                ))
            return
        if self.reader.finished:
            self._post("done", self.reader.done())
        else:
            self._post("interrupted", "the stream ended before the reply did")


class RemoteBackend(QObject):
    """Replies from `server`. Signals (payloads are `engine.protocol` events, like `EngineClient`):
      draft_received(Draft), draft_arrived(Draft)   never emitted: servers send committed canvases only
      canvas_committed(CanvasCommitted)             one per content chunk (vLLM: one per canvas)
      generation_finished(Done)                     stats from the stream (usage when sent)
      generation_failed(Error)                      HTTP errors with the server's reason, unreachable
      generation_interrupted(str)                   the connection broke mid-reply
    """

    draft_received = Signal(object)
    draft_arrived = Signal(object)
    canvas_committed = Signal(object)
    generation_finished = Signal(object)
    generation_failed = Signal(object)
    generation_interrupted = Signal(str)
    # From the stream threads (queued into the GUI thread): request id, kind, payload.
    stream_event = Signal(str, str, object)

    interrupted_text = INTERRUPTED_TEXT

    def __init__(self, server: RemoteServer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.server = server
        self._streams: dict[str, _Stream] = {}
        self.stream_event.connect(self._on_stream_event)

    @property
    def answered_by(self) -> str:
        return self.server.answered_by()

    def generate(
        self,
        conversation_id: str,
        messages: Sequence[ChatMessage],
        system_prompt: str = "",
        settings: GenerationSettings | None = None,
        thinking: bool = False,
    ) -> str:
        request_id = f"remote-{uuid.uuid4().hex[:12]}"
        stream = _Stream(self, request_id, self.server, self.request_body(messages, system_prompt, settings, thinking))
        self._streams[request_id] = stream
        stream.start()
        return request_id

    def request_body(
        self,
        messages: Sequence[ChatMessage],
        system_prompt: str,
        settings: GenerationSettings | None,
        thinking: bool,
    ) -> dict[str, Any]:
        settings = settings or GenerationSettings()
        wire = [{"role": "system", "content": system_prompt}] if system_prompt else []
        # A server gets text only (the attach button is off while one is used): earlier images stay here.
        wire += [{"role": m.role, "content": m.text} for m in messages]
        body: dict[str, Any] = {
            "model": self.server.model,
            "messages": wire,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": settings.max_new_tokens,
        }
        if settings.seed is not None:
            body["seed"] = settings.seed
        if self.server.diffusiongemma:
            # vLLM and Canvas Chat's server both read the thinking switch from the chat template kwargs.
            body["chat_template_kwargs"] = {"enable_thinking": thinking}
        return body

    def cancel(self, request_id: str) -> None:
        """Stops a reply at once: it ends "cancelled" with the canvases already received."""
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return
        stream.cancel()
        done = stream.reader.done(cancelled=True)
        QTimer.singleShot(0, self, lambda: self.generation_finished.emit(done))

    def active_request_ids(self) -> list[str]:
        return list(self._streams)

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """Cancels every reply and waits briefly for their threads (call when leaving the backend)."""
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream.cancel()
        for stream in streams:
            stream.join(timeout_s)

    def _on_stream_event(self, request_id: str, kind: str, payload: object) -> None:
        stream = self._streams.get(request_id)
        if stream is None:
            return  # cancelled: the stop already ended this reply
        if kind == "commit":
            self.canvas_committed.emit(payload)
            return
        del self._streams[request_id]
        if kind == "done":
            assert isinstance(payload, Done)
            self.generation_finished.emit(payload)
        elif kind == "failed":
            self.generation_failed.emit(payload)
        else:
            self.generation_interrupted.emit(request_id)
