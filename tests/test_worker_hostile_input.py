"""Hostile input never leaves the worker deaf: every line is answered, a dead IO thread ends it."""

from __future__ import annotations

import io
import os
import subprocess
import threading

import pytest

from engine import protocol as p
from engine import worker as engine_worker
from tests.conftest import PYTHON, TIMEOUT_SCALE, python_env
from tests.worker_process import WorkerProcess

DEEP = 100_000


@pytest.fixture(scope="module")
def worker():
    process = WorkerProcess()
    try:
        process.hello()
        yield process
    finally:
        status = process.close()
    assert status == 0


def hello_with(client_json: str, request_id: str = "h1") -> bytes:
    return ('{"type":"hello","request_id":"%s","protocol_version":1,"client":%s}' % (request_id, client_json)).encode()


@pytest.mark.parametrize(
    ("line", "request_id", "words"),
    [
        pytest.param(b"[" * DEEP + b"]" * DEEP, "", "nested too deeply", id="nested-100000-deep"),
        pytest.param(hello_with("[" * DEEP + "]" * DEEP, "d1"), "", "nested too deeply", id="deep-field"),
        pytest.param(
            b'{"type":"hello","request_id":"i1","protocol_version":' + b"9" * 5000 + b"}", "", "not JSON", id="5000-digits"
        ),
        pytest.param(
            b'{"type":"hello","request_id":"e1","protocol_version":1e999}', "e1", "expected an integer", id="1e999"
        ),
        pytest.param(
            b'{"type":"hello","request_id":"n1","protocol_version":NaN}', "n1", "expected an integer", id="NaN"
        ),
        pytest.param(
            b'{"type":"hello","request_id":"u1","protocol_version":1,"client":"\xff\xfe"}', "", "not JSON", id="invalid-utf8"
        ),
        pytest.param(b"\x00\x00\x00", "", "not JSON", id="nul-bytes"),
        pytest.param(hello_with('"a\x00b"', "z1"), "", "not JSON", id="nul-in-string"),
        pytest.param(
            hello_with('"' + "x" * (p.MAX_LINE_BYTES + 2**20) + '"', "big"), "", "longer than 16 MiB", id="huge-line"
        ),
    ],
)
@pytest.mark.log_expected("dropped a malformed request")
def test_a_hostile_line_is_answered_and_the_worker_keeps_serving(worker, line, request_id, words):
    # Sent from a thread: a 17 MiB line to a deaf worker would block this test instead of failing it.
    sender = threading.Thread(target=worker.send_bytes, args=(line,), daemon=True)
    sender.start()
    error = worker.next_event(timeout=30)
    sender.join(30 * TIMEOUT_SCALE)
    assert isinstance(error, p.Error), error
    assert error.code == "malformed_message" and error.recoverable
    assert error.request_id == request_id
    assert error.message.startswith("The engine could not read a request") and words in error.message
    assert worker.hello().protocol_version == p.PROTOCOL_VERSION


class _StdinThatBreaks(io.RawIOBase):
    """One hello, then reading fails the way a broken pipe or a bad handle would."""

    def __init__(self):
        self.lines = [p.encode(p.Hello("h1", p.PROTOCOL_VERSION)).encode() + b"\n"]

    def readline(self, size=-1):
        if self.lines:
            return self.lines.pop(0)
        raise OSError("the handle went bad")


class _StdoutThatBreaks(io.StringIO):
    def write(self, text):
        raise BrokenPipeError("the GUI closed its end")


def serve_in_thread(stdin, stdout) -> tuple[threading.Thread, list[int]]:
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(engine_worker.serve(stdin, stdout)), daemon=True)
    thread.start()
    thread.join(20 * TIMEOUT_SCALE)
    return thread, status


@pytest.mark.log_expected("the request reader failed|could no longer read requests")
def test_a_reader_that_dies_ends_the_worker_with_a_fatal_error():
    stdout = io.StringIO()
    thread, status = serve_in_thread(_StdinThatBreaks(), stdout)
    assert not thread.is_alive(), "the worker went deaf instead of exiting"
    assert status == [engine_worker.EXIT_FATAL]
    ready, fatal = [p.decode(line) for line in stdout.getvalue().splitlines()]
    assert isinstance(ready, p.Ready)
    assert isinstance(fatal, p.Error) and not fatal.recoverable and fatal.code == "internal"
    assert "could no longer read requests" in fatal.message and "the handle went bad" in fatal.message


@pytest.mark.log_expected("its event stream failed")
def test_a_writer_that_dies_ends_the_worker_instead_of_serving_nobody():
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as stdin, os.fdopen(write_end, "wb") as gui:
        gui.write(p.encode(p.Hello("h1", p.PROTOCOL_VERSION)).encode() + b"\n")
        gui.flush()  # and the GUI's end stays open: only the failed write can end the worker
        thread, status = serve_in_thread(stdin, _StdoutThatBreaks())
        assert not thread.is_alive(), "the worker kept running with nobody able to hear it"
        assert status == [engine_worker.EXIT_FATAL]


@pytest.mark.log_expected("an event could not be encoded")
def test_an_event_that_cannot_be_encoded_becomes_an_error_and_later_events_still_go_out():
    stdout = io.StringIO()
    channel = engine_worker.EventChannel(stdout)
    channel.send(p.HardwareReport("r1", {"gpu": object()}))
    channel.send(p.Unloaded("r2"))
    channel.close()
    error, unloaded = [p.decode(line) for line in stdout.getvalue().splitlines()]
    assert isinstance(error, p.Error) and error.request_id == "r1" and error.recoverable
    assert "could not send" in error.message
    assert unloaded == p.Unloaded("r2")


def test_a_real_worker_whose_stdout_is_closed_exits_non_zero_with_its_stdin_still_open():
    process = subprocess.Popen(
        [PYTHON, "-m", "engine", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=python_env(),
    )
    try:
        process.stdout.close()
        process.stdin.write(p.encode(p.Hello("h1", p.PROTOCOL_VERSION)).encode() + b"\n")
        process.stdin.flush()
        status = process.wait(30 * TIMEOUT_SCALE)
        log = process.stderr.read().decode("utf-8", "replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdin.close()
        process.stderr.close()
    assert status == engine_worker.EXIT_FATAL
    assert "can no longer answer the GUI" in log
