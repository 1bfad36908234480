"""Test-only switches of the real worker, read from its environment (see docs/protocol.md).

They exist so GUI and process tests can force a known reply, slow the loop down, or inject
a crash, a hang or an out-of-memory error into the real engine instead of a fake one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

log = logging.getLogger("canvas_chat.engine.test_switches")

FORCE_REPLY = "CANVAS_CHAT_TEST_FORCE_REPLY"
STEP_DELAY = "CANVAS_CHAT_TEST_STEP_DELAY"
FAULT = "CANVAS_CHAT_TEST_FAULT"
CRASH_EXIT_CODE = 70


def forced_reply() -> str | None:
    return os.environ.get(FORCE_REPLY)


def step_delay() -> float:
    try:
        return max(0.0, float(os.environ.get(STEP_DELAY, "0") or 0))
    except ValueError:
        return 0.0


def fault() -> tuple[str, str]:
    name, _, argument = os.environ.get(FAULT, "").partition(":")
    return name, argument


def apply_step_fault(fault: tuple[str, str], steps_done: int) -> None:
    name, argument = fault
    if name == "crash_after_steps" and steps_done > int(argument or 0):
        log.error("test fault: crashing after %s steps", argument)
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)
    if name == "hang_after_steps" and steps_done > int(argument or 0):
        log.error("test fault: hanging after %s steps", argument)
        threading.Event().wait()
    if name == "oom_on_generate" or (name == "oom_after_replies" and _oom_now(argument, steps_done)):
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (test fault)")


_replies_started = 0


def _oom_now(argument: str, steps_done: int) -> bool:
    """`oom_after_replies:OK:FAILING[:STEP]`: the first OK replies run, the next FAILING ones
    (retries included) run out of memory after decoder forward STEP (1: before the first draft),
    and the rest run."""
    global _replies_started
    ok, failing, step = ([int(part or 0) for part in argument.split(":")] + [0, 0, 0])[:3]
    if steps_done == 1:
        _replies_started += 1
    return steps_done == max(step, 1) and ok < _replies_started <= ok + max(failing, 1)


def apply_load_fault() -> None:
    name, argument = fault()
    if name == "slow_load":
        time.sleep(float(argument or 1))


def wants_garbage_stdout() -> bool:
    return fault()[0] == "garbage_stdout"
