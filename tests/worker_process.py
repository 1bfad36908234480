"""Drives a real `python -m engine serve` process from tests, one protocol line at a time."""

from __future__ import annotations

import queue
import subprocess
import threading
import uuid
from typing import Any

from engine import protocol as p
from tests.conftest import PYTHON, TIMEOUT_SCALE, python_env


class WorkerProcess:
    # Every worker a test started, for tests/logfail.py to read their WARNING+ lines.
    started: list[WorkerProcess] = []

    def __init__(self, **env: str):
        self.process = subprocess.Popen(
            [PYTHON, "-m", "engine", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=python_env(**env),
        )
        self.events: queue.Queue = queue.Queue()
        self.raw_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._closed = False
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        WorkerProcess.started.append(self)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        """Ends the worker whatever happened in the block: a failing assertion never leaks it."""
        if exc_type is not None and self.process.poll() is None:
            self.process.kill()
        self.close()

    def __del__(self):
        # A test that failed before close() must not leak the pipes as ResourceWarnings.
        if self.process.poll() is None:
            self.process.kill()

    def _read_stdout(self) -> None:
        for raw in self.process.stdout:
            line = raw.decode("utf-8").rstrip("\n")
            self.raw_lines.append(line)
            try:
                self.events.put(p.decode(line, p.EVENT_TYPES))
            except p.ProtocolError:
                self.events.put(("unparsable", line))
        self.events.put(None)

    def _read_stderr(self) -> None:
        for raw in self.process.stderr:
            self.stderr_lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def send(self, request: Any) -> None:
        self.send_line(p.encode(request))

    def send_line(self, line: str) -> None:
        self.send_bytes(line.encode("utf-8"))

    def send_bytes(self, line: bytes) -> None:
        self.process.stdin.write(line + b"\n")
        self.process.stdin.flush()

    def next_event(self, timeout: float = 60) -> Any:
        try:
            event = self.events.get(timeout=timeout * TIMEOUT_SCALE)
        except queue.Empty:
            raise AssertionError(
                f"no event from the worker within {timeout}s; its log ends with:\n" + "\n".join(self.stderr_lines[-20:])
            ) from None
        if event is None:
            raise AssertionError("the worker closed its stdout; log:\n" + "\n".join(self.stderr_lines[-20:]))
        return event

    def events_until(self, request_id: str, final_types: tuple[type, ...] = (p.Done, p.Error), timeout: float = 120):
        """All events up to and including the first final event of `request_id`."""
        seen = []
        while True:
            event = self.next_event(timeout)
            seen.append(event)
            if isinstance(event, final_types) and event.request_id == request_id:
                return seen

    def request(self, request: Any, final_types: tuple[type, ...] = (p.Done, p.Error), timeout: float = 120):
        self.send(request)
        return self.events_until(request.request_id, final_types, timeout)

    def hello(self) -> p.Ready:
        (ready,) = self.request(p.Hello(new_id(), p.PROTOCOL_VERSION), (p.Ready, p.Error))
        assert isinstance(ready, p.Ready), ready
        return ready

    def load(self, model: str, **options: Any) -> list:
        return self.request(p.LoadModel(new_id(), str(model), **options), (p.ModelLoaded, p.Error), timeout=180)

    def close(self, timeout: float = 30) -> int:
        """Closes stdin (the worker's signal to exit) and returns its exit status; idempotent."""
        if self._closed:
            return self.process.returncode
        self._closed = True
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            return self.process.wait(timeout * TIMEOUT_SCALE)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            for reader in self._readers:
                reader.join(10)
            self.process.stdout.close()
            self.process.stderr.close()


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def user(text: str) -> p.ChatMessage:
    return p.ChatMessage("user", text)


def assistant(text: str) -> p.ChatMessage:
    return p.ChatMessage("assistant", text)
