"""Which model the app starts with when none is chosen: the real one only where it can run."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.setup import model_choice
from app.setup.model_choice import choose_model
from app.window.main_window import MainWindow
from app.settings import Settings

REAL = "google/diffusiongemma-26B-A4B-it"


def report(code: str, recommended: str, summary: str = "") -> dict:
    return {"model_id": REAL, "verdict": {"code": code, "recommended": recommended, "summary": summary}}


@pytest.fixture
def demo_folder(monkeypatch, tmp_path) -> Path:
    folder = tmp_path / "demo-model"
    folder.mkdir()
    monkeypatch.setattr(model_choice, "demo_model_path", lambda: folder)
    return folder


def test_a_model_chosen_in_settings_wins(demo_folder):
    choice = choose_model(Settings(model="/models/mine"), probe=lambda: report("no_gpu", "demo"))
    assert choice.model == "/models/mine" and not choice.is_demo


def test_the_real_model_is_the_default_where_the_gpu_can_run_it_and_it_is_downloaded(demo_folder):
    choice = choose_model(Settings(), probe=lambda: report("ok", "real", "This PC can run it"))
    assert choice.model == REAL and not choice.is_demo


def test_without_a_gpu_the_demo_model_runs_and_the_reason_is_given(demo_folder):
    summary = "No NVIDIA GPU found: Canvas Chat will use the built-in demo model on the CPU."
    choice = choose_model(Settings(), probe=lambda: report("no_gpu", "demo", summary))
    assert choice.model == str(demo_folder) and choice.is_demo
    assert choice.reason == summary


def test_a_capable_gpu_without_the_weights_gets_the_demo_and_a_pointer_to_model_setup(demo_folder):
    choice = choose_model(Settings(), probe=lambda: report("ok", "demo", "This PC can run it"))
    assert choice.is_demo and "not downloaded yet" in choice.reason and "Model setup" in choice.reason


@pytest.mark.qt_log_ignore("This plugin does not support")
def test_the_window_labels_the_demo_model_and_says_why(qtbot, demo_folder, monkeypatch):
    from app.worker.engine_client import EngineClient
    from app.chat.store import ChatStore

    monkeypatch.setattr(model_choice, "probe_hardware", lambda: report("no_gpu", "demo", "No NVIDIA GPU found."))
    store, client = ChatStore(), EngineClient()
    window = MainWindow(Settings(), store, client)
    qtbot.addWidget(window)
    monkeypatch.setattr(client, "start", lambda *args, **kwargs: None)  # no worker needed here
    assert window.start_engine()
    text = window.empty_label.text()
    assert "tiny demo model" in text and "toy skills" in text and "No NVIDIA GPU found." in text
    from app.worker.engine_client import EngineState
    from engine.protocol import ModelLoaded

    client._model_info = ModelLoaded("l1", str(demo_folder), str(demo_folder), "cpu", "none", 16, 1000, 1.0, True)
    window._on_client_state_changed(EngineState.READY)
    assert window.engine_status.model_label.text().startswith("Demo model")
    window.close()
    store.close()
