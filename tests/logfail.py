"""Unexpected log records fail a test, in every test folder (qutebrowser's logfail).

A WARNING or worse on a `canvas_chat` logger (the GUI's and the engine's) fails the test unless
the test expects it: `with caplog.at_level(logging.WARNING, logger="canvas_chat.store"):` — a
record whose logger level equals its own level counts as expected — or says
`@pytest.mark.log_expected("regex")` for the messages it causes on purpose. The same holds for the
WARNING+ lines of the worker processes an engine test drives (`tests.worker_process`). Lines a
worker wrote to its stderr and the GUI forwarded (`worker_line`) are left to the engine tests.
"""

from __future__ import annotations

import logging
import re

import pytest

CHECKED_LOGGER = "canvas_chat"
WORKER_PROBLEM_LINE = re.compile(r"^(WARNING|ERROR|CRITICAL) ")


class LogRecorder(logging.Handler):
    def __init__(self, expected: list[re.Pattern[str]]) -> None:
        super().__init__(logging.WARNING)
        self.expected = expected
        self.unexpected: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "worker_line", False):
            return  # the worker's own stderr, forwarded into the GUI's log
        if logging.getLogger(record.name).level == record.levelno:
            return  # caplog.at_level(record level, logger=record.name): expected
        if any(pattern.search(record.getMessage()) for pattern in self.expected):
            return
        self.unexpected.append(record)


@pytest.fixture(autouse=True)
def fail_on_unexpected_logs(request):
    """A WARNING or worse on a canvas_chat logger, or in a driven worker's log, fails the test
    unless it was expected."""
    from tests.worker_process import WorkerProcess

    expected = [re.compile(mark.args[0]) for mark in request.node.iter_markers("log_expected")]
    seen_before = {id(worker): len(worker.stderr_lines) for worker in WorkerProcess.started}
    recorder = LogRecorder(expected)
    logger = logging.getLogger(CHECKED_LOGGER)
    logger.addHandler(recorder)
    yield recorder
    logger.removeHandler(recorder)
    lines = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in recorder.unexpected]
    for worker in WorkerProcess.started:
        for line in worker.stderr_lines[seen_before.get(id(worker), 0) :]:
            if WORKER_PROBLEM_LINE.match(line) and not any(pattern.search(line) for pattern in expected):
                lines.append(f"worker: {line}")
    WorkerProcess.started[:] = [worker for worker in WorkerProcess.started if worker.process.poll() is None]
    if lines:
        pytest.fail("unexpected log records:\n" + "\n".join(lines))
