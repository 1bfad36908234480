"""`EngineState`: where the engine worker is in its life, as the GUI sees it, and the moves between states.

`next_state()` derives the state from the client's lifecycle facts and checks the move against
`TRANSITIONS`: a move not listed there is a bug, logged as an error (which fails a test).
"""

from __future__ import annotations

import enum
import logging

log = logging.getLogger("canvas_chat.engine_client")


class EngineState(enum.Enum):
    STOPPED = "stopped"  # no worker: not started yet, or shut down
    STARTING = "starting"  # launched, waiting for the handshake
    LOADING = "loading"  # a LoadModel in flight
    READY = "ready"  # a worker that answers, no reply in flight
    GENERATING = "generating"  # at least one reply in flight
    CRASHED = "crashed"  # exited unexpectedly; no restart coming (Restart button)
    RESTARTING = "restarting"  # a new worker is on its way (backoff timer, launch, handshake)


_S = EngineState
# Every move the client makes; anything else is a bug, logged as an error (which fails a test).
TRANSITIONS: dict[EngineState, frozenset[EngineState]] = {
    _S.STOPPED: frozenset({_S.STARTING, _S.RESTARTING}),
    _S.STARTING: frozenset({_S.LOADING, _S.READY, _S.GENERATING, _S.CRASHED, _S.RESTARTING, _S.STOPPED}),
    _S.LOADING: frozenset({_S.READY, _S.GENERATING, _S.CRASHED, _S.RESTARTING, _S.STOPPED}),
    _S.READY: frozenset({_S.LOADING, _S.GENERATING, _S.CRASHED, _S.RESTARTING, _S.STOPPED}),
    _S.GENERATING: frozenset({_S.READY, _S.LOADING, _S.CRASHED, _S.RESTARTING, _S.STOPPED}),
    _S.CRASHED: frozenset({_S.STARTING, _S.RESTARTING, _S.STOPPED}),
    _S.RESTARTING: frozenset({_S.LOADING, _S.READY, _S.GENERATING, _S.CRASHED, _S.STOPPED}),
}


def next_state(
    current: EngineState,
    *,
    running: bool,
    crashed: bool,
    stopping: bool,
    restart_pending: bool,
    handshaken: bool,
    loading: bool,
    generating: bool,
) -> EngineState:
    """The state these facts describe; `current` is kept while a stop is under way."""
    if not running:
        if crashed:
            state = EngineState.RESTARTING if restart_pending else EngineState.CRASHED
        else:
            state = EngineState.RESTARTING if restart_pending else EngineState.STOPPED
    elif stopping:
        state = EngineState.RESTARTING if restart_pending else current
    elif not handshaken:
        state = EngineState.RESTARTING if restart_pending else EngineState.STARTING
    elif loading:
        state = EngineState.LOADING
    elif generating:
        state = EngineState.GENERATING
    else:
        state = EngineState.READY
    if state != current and state not in TRANSITIONS[current]:
        log.error("engine state moved %s -> %s, which is not in TRANSITIONS", current.value, state.value)
    return state
