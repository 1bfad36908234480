"""The HTTP side: a Starlette app served by uvicorn on a thread of the worker process.

Each request becomes an `ApiJob` on the worker's request queue (first come, first served with
the GUI's requests); the loop thread reports back through a per-request asyncio queue.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.api import wire
from engine.api.jobs import ApiDelta, ApiDraftView, ApiFailed, ApiFinished, ApiJob

log = logging.getLogger("canvas_chat.engine.api")

DEFAULT_PORT = 1234


class BindRefused(Exception):
    """The server cannot listen where it was asked to; the message says why, for the user."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class RequestRecord:
    """One line of the request log."""

    method: str
    path: str
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_s: float = 0.0
    wall_s: float = 0.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str) -> None:
    """Loopback is always allowed; any other address is reachable from the network and needs a token."""
    if not is_loopback(host) and not token:
        raise BindRefused(
            f"Refusing to listen on {host}: that address is reachable from other computers. "
            "Set an access token to serve beyond this PC.",
            "api_token_required",
        )


class ApiServer:
    """Owns the listening socket and the uvicorn thread; `stop()` ends both."""

    def __init__(
        self,
        *,
        submit: Callable[[ApiJob], None],
        cancel: Callable[[str], None],
        model_id: Callable[[], str | None],
        record: Callable[[RequestRecord], None] = lambda record: None,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        token: str = "",
        cors_origins: tuple[str, ...] = (),
        max_body_bytes: int = wire.MAX_BODY_BYTES,
    ):
        check_bind(host, token)
        self.host, self.token = host, token
        self.max_body_bytes = max_body_bytes
        self._submit, self._cancel, self._model_id, self._record = submit, cancel, model_id, record
        self._open_jobs: set[str] = set()
        self._jobs_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if not _is_windows():  # on Windows SO_REUSEADDR would let two servers share a port
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
                raise BindRefused(
                    f"Port {port} is already in use by another program: choose another port.", "api_port_in_use"
                ) from None
            raise BindRefused(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.", "api_bind_failed") from None
        self._socket = sock
        self.port = sock.getsockname()[1]
        import uvicorn

        config = uvicorn.Config(
            self._app(cors_origins),
            log_config=None,  # keep the worker's logging as it is
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="api-server", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def stop(self, timeout: float = 10.0) -> None:
        with self._jobs_lock:
            open_jobs = list(self._open_jobs)
        for job_id in open_jobs:
            self._cancel(job_id)
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException:
            log.exception("the API server stopped")

    # ------------------------------------------------------------------------ the app

    def _app(self, cors_origins: tuple[str, ...]):
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware
        from starlette.routing import Route

        middleware = []
        if cors_origins:
            middleware.append(
                Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"], allow_headers=["*"])
            )
        routes = [
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
        ]
        return Starlette(routes=routes, middleware=middleware, exception_handlers={404: self._not_found, 405: self._not_found})

    async def _not_found(self, request, exc):
        status = getattr(exc, "status_code", 404)
        return self._refusal(request, wire.ApiRefusal(status, f"No such endpoint: {request.method} {request.url.path}."))

    def _authorized(self, request) -> bool:
        if not self.token:
            return True
        given = request.headers.get("authorization", "")
        expected = f"Bearer {self.token}"
        return hmac.compare_digest(given.encode(), expected.encode())

    def _refusal(self, request, refusal: wire.ApiRefusal, started: float | None = None):
        from starlette.responses import JSONResponse

        headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
        self._log(request, refusal.status, started=started)
        return JSONResponse(refusal.body(), status_code=refusal.status, headers=headers)

    def _log(self, request, status: int, started: float | None = None, finished: ApiFinished | None = None) -> None:
        record = RequestRecord(
            request.method,
            request.url.path,
            status,
            prompt_tokens=finished.prompt_tokens if finished else 0,
            completion_tokens=finished.completion_tokens if finished else 0,
            tokens_per_s=finished.tokens_per_s if finished else 0.0,
            wall_s=round(time.perf_counter() - started, 3) if started else 0.0,
        )
        log.info("%s %s %s", record.method, record.path, record.status)
        try:
            self._record(record)
        except Exception:
            log.exception("could not record an API request")

    async def _models(self, request):
        from starlette.responses import JSONResponse

        if not self._authorized(request):
            return self._refusal(request, wire.ApiRefusal(401, "Missing or wrong API token (Authorization: Bearer ...).", code="invalid_api_key"))
        self._log(request, 200)
        return JSONResponse(wire.model_list(self._model_id()))

    async def _chat(self, request):
        return await self._generate(request, wire.parse_chat_request)

    async def _completions(self, request):
        return await self._generate(request, wire.parse_completion_request)

    async def _read_body(self, request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise wire.ApiRefusal(413, f"The request body is over {self.max_body_bytes:,} bytes.", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise wire.ApiRefusal(413, f"The request body is over {self.max_body_bytes:,} bytes.", code="body_too_large")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise wire.ApiRefusal(400, f"The request body is not valid JSON: {exc}.") from None

    async def _generate(self, request, parse):
        from starlette.responses import JSONResponse, StreamingResponse

        started = time.perf_counter()
        if not self._authorized(request):
            return self._refusal(request, wire.ApiRefusal(401, "Missing or wrong API token (Authorization: Bearer ...).", code="invalid_api_key"))
        try:
            api_request = parse(await self._read_body(request))
            model_id = self._model_id()
            if model_id is None:
                raise wire.ApiRefusal(503, "No model is loaded yet: load one in Canvas Chat first.", code="no_model_loaded")
        except wire.ApiRefusal as refusal:
            return self._refusal(request, refusal, started)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(event: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:
                pass  # the server's loop is gone: nobody is listening any more

        job = ApiJob(api_request, sink)
        with self._jobs_lock:
            self._open_jobs.add(job.request_id)
        self._submit(job)
        completion_id = wire.new_id("chatcmpl" if api_request.kind == "chat" else "cmpl")
        model = api_request.model or model_id
        if api_request.stream:
            body = self._stream(request, job, events, completion_id, model, started)
            return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            outcome = await self._until_finished(request, job, events)
        finally:
            self._close_job(job)
        if outcome is None:
            self._log(request, 499, started)
            return JSONResponse({}, status_code=499)
        if isinstance(outcome, ApiFailed):
            return self._refusal(request, wire.ApiRefusal(outcome.status, outcome.message, code=outcome.code), started)
        self._log(request, 200, started, outcome)
        used = wire.usage(outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens)
        if api_request.kind == "completion":
            return JSONResponse(wire.text_completion(completion_id, model, outcome.content, outcome.finish_reason, used))
        return JSONResponse(wire.chat_completion(completion_id, model, _message(outcome), outcome.finish_reason, used))

    def _close_job(self, job: ApiJob) -> None:
        with self._jobs_lock:
            self._open_jobs.discard(job.request_id)

    async def _until_finished(self, request, job: ApiJob, events: asyncio.Queue):
        """Waits for the job's end; a client that hangs up cancels it (None is returned)."""
        disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    self._cancel(job.request_id)
                    return None
                event = getter.result()
                if isinstance(event, (ApiFinished, ApiFailed)):
                    return event
        finally:
            disconnected.cancel()

    async def _stream(self, request, job: ApiJob, events: asyncio.Queue, completion_id: str, model: str, started: float):
        chat = job.request.kind == "chat"
        include_usage = job.request.include_usage
        finished = False
        try:
            if chat:
                yield _sse(wire.chat_chunk(completion_id, model, {"role": "assistant", "content": ""}))
            while True:
                event = await events.get()
                if isinstance(event, ApiDraftView):
                    draft = {"canvas_index": event.canvas_index, "step_index": event.step_index, "max_steps": event.max_steps, "text": event.text}
                    yield _sse(wire.chat_chunk(completion_id, model, None, draft=draft) if chat else {**wire.text_completion(completion_id, model, None, None, None), "canvas_draft": draft})
                elif isinstance(event, ApiDelta):
                    if chat:
                        delta: dict[str, Any] = {}
                        if event.content:
                            delta["content"] = event.content
                        if event.reasoning:
                            delta["reasoning_content"] = event.reasoning
                        if event.tool_calls:
                            delta["tool_calls"] = list(event.tool_calls)
                        yield _sse(wire.chat_chunk(completion_id, model, delta))
                    else:
                        yield _sse(wire.text_completion(completion_id, model, event.content, None, None))
                elif isinstance(event, ApiFailed):
                    finished = True
                    self._log(request, event.status, started)
                    yield _sse(wire.ApiRefusal(event.status, event.message, code=event.code).body())
                    break
                elif isinstance(event, ApiFinished):
                    finished = True
                    if event.finish_reason == "cancelled":
                        self._log(request, 499, started, event)
                        break
                    self._log(request, 200, started, event)
                    if chat:
                        yield _sse(wire.chat_chunk(completion_id, model, {}, finish_reason=event.finish_reason))
                    else:
                        yield _sse(wire.text_completion(completion_id, model, "", event.finish_reason, None))
                    if include_usage:
                        used = wire.usage(event.prompt_tokens, event.completion_tokens, event.cached_tokens)
                        yield _sse(wire.chat_chunk(completion_id, model, None, used=used) if chat else wire.text_completion(completion_id, model, None, None, used))
                    break
            yield "data: [DONE]\n\n"
        finally:
            # Reached early when the client hangs up (Starlette cancels this generator).
            if not finished:
                self._cancel(job.request_id)
                self._log(request, 499, started)
            self._close_job(job)


async def _wait_for_disconnect(request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _message(outcome: ApiFinished) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": outcome.content if outcome.content or not outcome.tool_calls else None}
    if outcome.reasoning:
        message["reasoning_content"] = outcome.reasoning
    if outcome.tool_calls:
        message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in outcome.tool_calls]
    return message


def _sse(payload: dict[str, Any]) -> str:
    return "data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def _is_windows() -> bool:
    import sys

    return sys.platform == "win32"
