"""Helpers for the remote engine tests: an in-memory keyring (nothing touches the OS keyring) and
Canvas Chat's own API server (`python -m engine api`) on the tiny model, as a real process."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from keyring.backend import KeyringBackend

from tests.conftest import REPO_ROOT, python_env


class MemoryKeyring(KeyringBackend):
    """A keyring that lives in this process only."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.passwords.pop((service, username), None)


@dataclass
class ApiServer:
    process: subprocess.Popen
    base_url: str
    token: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()


def start_api_server(model_dir, reply: str, token: str = "", step_delay: str = "0") -> ApiServer:
    """Starts the headless server on a free port and returns once it prints that it is ready."""
    command = [sys.executable, "-m", "engine", "api", "--model", str(model_dir), "--port", "0", "--device", "cpu"]
    if token:
        command += ["--token", token]
    env = python_env(
        CANVAS_CHAT_TEST_FORCE_REPLY=reply, CANVAS_CHAT_TEST_STEP_DELAY=step_delay, OMP_NUM_THREADS="1"
    )
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ready = process.stdout.readline()  # the server's own readiness line (or EOF if it failed)
    if not ready.startswith("Canvas Chat API ready: "):
        process.kill()
        _, err = process.communicate()
        raise RuntimeError(f"the API server did not start: {ready!r} {err[-2000:]}")
    return ApiServer(process, ready.split("ready: ", 1)[1].strip(), token)


FIXTURES = REPO_ROOT / "tests" / "fixtures"


@dataclass
class Recorded:
    """What the replay server answers: a status, headers and a body (an SSE file's lines)."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/event-stream"),)
    hold_after_first_event: bool = False  # a slow server: one event, then nothing until released


class ReplayServer:
    """A stdlib HTTP server in a thread that answers like vLLM: `GET /v1/models` with `models`,
    `POST /v1/chat/completions` with `chat` (a recorded SSE stream or an error answer)."""

    def __init__(self, models: list[dict] | None = None) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.models = models if models is not None else [
            {"id": "google/diffusiongemma-26B-A4B-it", "object": "model", "created": 1764633600,
             "owned_by": "vllm", "root": "google/diffusiongemma-26B-A4B-it", "parent": None, "max_model_len": 32768}
        ]
        self.chat = Recorded()
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.client_gone = threading.Event()
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, *_args) -> None:
                pass

            def _send(self, status: int, headers, body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    body = json.dumps({"object": "list", "data": replay.models}).encode()
                    self._send(200, [("Content-Type", "application/json")], body)
                else:
                    self._send(404, [("Content-Type", "application/json")], b'{"detail": "Not Found"}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                replay.requests.append(json.loads(self.rfile.read(length)))
                recorded = replay.chat
                if not recorded.hold_after_first_event:
                    self._send(recorded.status, recorded.headers, recorded.body)
                    return
                first, _, _ = recorded.body.partition(b"\n\n")
                self._send(recorded.status, recorded.headers, first + b"\n\n")
                self.wfile.flush()
                replay.release.wait(60)
                try:
                    self.wfile.write(b": still here\n\n")
                    self.wfile.flush()
                except OSError:
                    replay.client_gone.set()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="replay-server", daemon=True)
        self._thread.start()

    def replay_file(self, name: str) -> None:
        self.chat = Recorded(body=(FIXTURES / name).read_bytes())

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
