"""Unexpected log records fail a test, in every test folder (qutebrowser's logfail).

A WARNING or worse on a `canvas_chat` logger (the GUI's and the engine's) fails the test unless
the test expects it: `with caplog.at_level(logging.WARNING, logger="canvas_chat.store"):` — a
record whose logger level equals its own level counts as expected. Lines a worker process wrote
to its stderr and the GUI forwarded (`worker_line`) are the worker's, not this process's.
"""

from __future__ import annotations

import logging

import pytest

CHECKED_LOGGER = "canvas_chat"


class LogRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.unexpected: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "worker_line", False):
            return  # the worker's own stderr, forwarded into the GUI's log
        if logging.getLogger(record.name).level == record.levelno:
            return  # caplog.at_level(record level, logger=record.name): expected
        self.unexpected.append(record)


@pytest.fixture(autouse=True)
def fail_on_unexpected_logs():
    """A WARNING or worse on a canvas_chat logger fails the test unless it was expected."""
    recorder = LogRecorder()
    logger = logging.getLogger(CHECKED_LOGGER)
    logger.addHandler(recorder)
    yield recorder
    logger.removeHandler(recorder)
    if recorder.unexpected:
        lines = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in recorder.unexpected]
        pytest.fail("unexpected log records:\n" + "\n".join(lines))
