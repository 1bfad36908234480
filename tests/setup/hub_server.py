"""A local stand-in for the Hugging Face Hub, serving one folder as a model repository.

It answers what huggingface_hub asks (HF_ENDPOINT points at it): the model info API with file
metadata (`/api/models/{repo}/revision/{rev}?blobs=true`) and file HEAD/GET at
`/{repo}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag`, `X-Linked-Etag`/`X-Linked-Size`
for LFS files and `Range` support. Faults are switched on per test: slow chunks, a connection
dropped mid-file, a corrupted body, a required token. Binds 127.0.0.1 only, and shuts itself
down after `lifetime_s` even if a test forgets to.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".bin")
LFS_NAMES = ("tokenizer.json",)
SEND_CHUNK = 16 * 1024


@dataclass
class HubFile:
    name: str
    data: bytes
    lfs: bool

    @property
    def git_oid(self) -> str:
        payload = self.data if not self.lfs else self.pointer
        return hashlib.sha1(f"blob {len(payload)}\0".encode() + payload).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (
            "version https://git-lfs.github.com/spec/v1\n"
            f"oid sha256:{hashlib.sha256(self.data).hexdigest()}\nsize {len(self.data)}\n"
        ).encode()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Faults:
    chunk_delay_s: float = 0.0  # pause after each 16 KB sent
    drop_once: dict[str, int] = field(default_factory=dict)  # file -> close the connection after N bytes, once
    corrupt: set[str] = field(default_factory=set)  # files served with one byte changed
    token: str | None = None  # when set, requests without "Bearer <token>" get 401 GatedRepo
    gate_files_only: bool = False  # the Hub's way for gated models: metadata public, files not
    ignore_range: bool = False


class FakeHub:
    def __init__(self, repo_id: str, folder: Path, *, lifetime_s: float = 300.0):
        self.repo_id = repo_id
        self.files: dict[str, HubFile] = {}
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                name = path.relative_to(folder).as_posix()
                lfs = name.endswith(LFS_SUFFIXES) or name in LFS_NAMES
                self.files[name] = HubFile(name, path.read_bytes(), lfs)
        self.faults = Faults()
        self.requests: list[tuple[str, str, str | None]] = []
        self._stopped = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._watchdog = threading.Timer(lifetime_s, self.stop)
        self._watchdog.daemon = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._thread.start()
        self._watchdog.start()
        return self

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._watchdog.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def gets_of(self, name: str) -> list[str | None]:
        """The Range header of every GET of `name` (None for a whole-file request)."""
        return [rng for method, path, rng in self.requests if method == "GET" and path.endswith("/" + name)]

    @property
    def total_bytes(self) -> int:
        return sum(len(f.data) for f in self.files.values())

    # ------------------------------------------------------------------ HTTP

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - keep test output clean
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        return Handler

    def _send(self, handler, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head and body:
            handler.wfile.write(body)

    def _authorized(self, handler) -> bool:
        if self.faults.token is None:
            return True
        if self.faults.gate_files_only and handler.path.startswith("/api/"):
            return True
        return handler.headers.get("authorization", "") == f"Bearer {self.faults.token}"

    def _serve(self, handler, *, head: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.requests.append((handler.command, path, handler.headers.get("Range")))
        try:
            if not self._authorized(handler):
                self._send(
                    handler,
                    401,
                    {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this model is restricted."},
                    b'{"error":"Access to this model is restricted."}',
                    head,
                )
                return
            api = re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path)
            if api:
                self._serve_info(handler, api.group(1), head)
                return
            prefix = f"/{self.repo_id}/resolve/"
            if path.startswith(prefix):
                revision, _, name = path[len(prefix) :].partition("/")
                self._serve_file(handler, name, head)
                return
            self._send(handler, 404, {"X-Error-Code": "RepoNotFound"}, b"{}", head)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass

    def _serve_info(self, handler, repo_id: str, head: bool) -> None:
        if repo_id != self.repo_id:
            self._send(handler, 404, {"X-Error-Code": "RepoNotFound"}, b'{"error":"Repository not found"}', head)
            return
        siblings = []
        for hub_file in self.files.values():
            entry = {"rfilename": hub_file.name, "blobId": hub_file.git_oid}
            if hub_file.lfs:
                entry["size"] = len(hub_file.data)
                entry["lfs"] = {"sha256": hub_file.sha256, "size": len(hub_file.data), "pointerSize": len(hub_file.pointer)}
            else:
                entry["size"] = len(hub_file.data)
            siblings.append(entry)
        body = json.dumps(
            {"id": self.repo_id, "modelId": self.repo_id, "sha": COMMIT, "private": False, "gated": False, "siblings": siblings}
        ).encode()
        self._send(handler, 200, {"Content-Type": "application/json"}, body, head)

    def _serve_file(self, handler, name: str, head: bool) -> None:
        hub_file = self.files.get(name)
        if hub_file is None:
            self._send(handler, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"{}", head)
            return
        data = hub_file.data
        if name in self.faults.corrupt:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        headers = {"X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if hub_file.lfs:
            headers["X-Linked-Etag"] = f'"{hub_file.sha256}"'
            headers["X-Linked-Size"] = str(len(data))
            headers["ETag"] = f'"{hub_file.git_oid}"'
        else:
            headers["ETag"] = f'"{hub_file.git_oid}"'
        start = 0
        status = 200
        range_header = handler.headers.get("Range")
        if range_header and not self.faults.ignore_range and not head:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
            if match:
                start = int(match.group(1))
                if start >= len(data):
                    headers["Content-Range"] = f"bytes */{len(data)}"
                    self._send(handler, 416, headers, b"", head)
                    return
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if head:
            return
        drop_at = self.faults.drop_once.pop(name, None)
        sent = 0
        while sent < len(body) and not self._stopped.is_set():
            piece = body[sent : sent + SEND_CHUNK]
            if drop_at is not None and start + sent + len(piece) > drop_at:
                piece = piece[: max(drop_at - start - sent, 0)]
                handler.wfile.write(piece)
                handler.wfile.flush()
                # An abrupt close mid-body: the client sees fewer bytes than Content-Length.
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_WR)
                return
            handler.wfile.write(piece)
            sent += len(piece)
            if self.faults.chunk_delay_s:
                time.sleep(self.faults.chunk_delay_s)
