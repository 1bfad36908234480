"""Fixtures for the GUI-side tests (tests/gui/): Qt warnings fail a test (unexpected log records
do in every folder: tests/logfail.py), a store in the isolated home, and engine clients that are
always shut down.

Expecting a Qt warning: `@pytest.mark.qt_log_ignore("regex")`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from tests.conftest import timeout_ms

@pytest.fixture(autouse=True)
def fail_on_qt_warnings(request):
    """A Qt warning (or critical) during the test body fails it (pytest-qt's qt_log_level_fail)."""
    if request.node.get_closest_marker("qt_log_level_fail") is None:
        request.node.add_marker(pytest.mark.qt_log_level_fail("WARNING"))
    yield


@pytest.fixture
def chat_store():
    from app.chat.store import ChatStore

    store = ChatStore()
    yield store
    store.close()


@pytest.fixture
def make_engine_client(qapp, qtbot):
    """Builds EngineClients (fast restart backoff for tests) and shuts every one down after the test."""
    from app.worker.engine_client import EngineClient

    clients = []

    def make(**kwargs):
        kwargs.setdefault("restart_delays_s", (0.05, 0.1, 0.2))
        client = EngineClient(**kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.shutdown()
        client.deleteLater()


def start_and_load(qtbot, client, model_dir, seconds: float = 60) -> None:
    """Starts a client and waits until its model is loaded."""
    with qtbot.waitSignal(client.model_loaded, timeout=timeout_ms(seconds)):
        client.start(str(model_dir))


# A forced reply of 40-odd tokens: three 16-token canvases of the tiny model, so a reply can be
# stopped or killed between canvases.
REPLY = "Denoising turns noise into text, one canvas at a time, step by step."


@dataclass
class SharedEngine:
    client: object
    states: list = field(default_factory=list)
    load_progress: list = field(default_factory=list)


@pytest.fixture(scope="session")
def shared_engine_client(qapp, tiny_model_dir, tmp_path_factory):
    """One real worker on the tiny model for tests that leave it READY (forced reply `REPLY`,
    20 ms per denoising step). Tests that crash, restart or stop a worker make their own."""
    from app.worker.engine_client import EngineClient

    home = tmp_path_factory.mktemp("shared-engine-home")
    client = EngineClient()
    shared = SharedEngine(client)
    client.state_changed.connect(shared.states.append)
    client.load_progressed.connect(shared.load_progress.append)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CANVAS_CHAT_HOME", str(home))
        patch.setenv("HF_HOME", str(home / "hf"))
        patch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))
        patch.setenv("HUGGINGFACE_HUB_CACHE", str(home / "hf" / "hub"))
        patch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", REPLY)
        patch.setenv("CANVAS_CHAT_TEST_STEP_DELAY", "0.02")
        patch.delenv("CANVAS_CHAT_TEST_FAULT", raising=False)
        client.start(str(tiny_model_dir))  # the worker process, and its environment, start here
    yield shared
    client.shutdown()
    client.deleteLater()
