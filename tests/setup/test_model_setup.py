"""pytest-qt tests of the setup screen: verdict, download, pause/resume, cancel, local folder, demo."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path

import pytest
from PySide6.QtWidgets import QFileDialog, QWidget

from engine import hardware as hw
from app.setup.download import ModelDownload
from app.setup.download_child import TEST_RETRY_WAIT_ENV
from app.setup.download_plan import TEST_DISK_FREE_ENV
from app.setup.dialog import ModelSetupDialog, open_model_setup
from app.settings import Settings
from tests.conftest import timeout_ms
from tests.setup.conftest import REAL_MODEL_ID

GIB = 1024**3


def _report(gpu_gib: float | None, *, downloaded: bool = False) -> dict:
    gpu = None
    if gpu_gib is not None:
        gpu = {
            "index": 0,
            "name": "NVIDIA GeForce RTX 4090",
            "compute_capability": "8.9",
            "driver_version": "566.36",
            "total_vram_bytes": int(gpu_gib * GIB),
            "free_vram_bytes": int(gpu_gib * GIB),
        }
    plan = hw.estimate_plan()
    verdict = hw.make_verdict(
        gpu,
        plan,
        cuda_available=None,
        ram_total_bytes=64 * GIB,
        disk_free_bytes=400 * GIB,
        disk_path="/disk",
        model_downloaded=downloaded,
    )
    return {
        "source": "gui",
        "gpu": gpu,
        "gpus": [gpu] if gpu else [],
        "driver_version": gpu and gpu["driver_version"],
        "ram_total_bytes": 64 * GIB,
        "disk_free_bytes": 400 * GIB,
        "model_downloaded": downloaded,
        "plan": plan,
        "verdict": verdict,
    }


@pytest.fixture
def make_dialog(qtbot, fake_hub):
    made: list[ModelSetupDialog] = []

    def make(report: dict | None = None, **extra_env: str) -> ModelSetupDialog:
        env = {TEST_RETRY_WAIT_ENV: "0.05", **extra_env}
        download = ModelDownload(REAL_MODEL_ID, endpoint=fake_hub.url, extra_env=env)
        dialog = ModelSetupDialog(report=report if report is not None else _report(24), download=download)
        qtbot.addWidget(dialog)
        made.append(dialog)
        return dialog

    yield make
    for dialog in made:
        dialog.shutdown()


def test_the_verdict_is_shown(make_dialog):
    dialog = make_dialog(_report(24))
    assert dialog.verdict_label.text() == "This PC can run DiffusionGemma 26B-A4B (NF4, ~20 GB of 24 GB with image input)."
    assert "The model is not downloaded yet" in dialog.notes_label.text()
    assert dialog.hardware_label.text().startswith("NVIDIA GeForce RTX 4090, 24 GB VRAM")
    assert dialog.download_button.isDefault() and not dialog.use_demo_button.isDefault()
    assert not dialog.use_download_button.isEnabled()


def test_without_a_gpu_the_demo_is_the_default_choice(make_dialog):
    dialog = make_dialog(_report(None))
    assert dialog.verdict_label.text() == "No NVIDIA GPU found: Canvas Chat will use the built-in demo model on the CPU."
    assert dialog.use_demo_button.isDefault()


def test_the_hardware_check_runs_off_the_gui_thread(qtbot, no_nvidia_smi):
    threads = []

    def probe():
        threads.append(threading.current_thread())
        return hw.probe(use_torch=False)

    dialog = ModelSetupDialog(probe=probe)
    qtbot.addWidget(dialog)
    assert dialog.verdict_label.text() == "Checking this PC\u2026"
    qtbot.waitUntil(lambda: dialog.report is not None, timeout=timeout_ms(30))
    dialog.shutdown()
    assert threads and threads[0] is not threading.main_thread()
    assert dialog.verdict_label.text().startswith("No NVIDIA GPU found")


def test_a_worker_report_replaces_the_gui_one(make_dialog):
    dialog = make_dialog(_report(None))
    dialog.set_hardware_report(dict(_report(24), source="engine"))
    assert dialog.verdict_label.text().startswith("This PC can run")


def test_download_progress_moves_and_the_model_can_be_chosen(make_dialog, fake_hub, qtbot):
    fake_hub.faults.chunk_delay_s = 0.01
    dialog = make_dialog()
    values = []
    dialog.download.progressed.connect(lambda _: values.append(dialog.progress_bar.value()))
    with qtbot.waitSignal(dialog.download.finished, timeout=timeout_ms(60)):
        qtbot.mouseClick(dialog.download_button, qtbot_button())
        qtbot.waitUntil(lambda: " of " in dialog.progress_label.text(), timeout=timeout_ms(30))
        assert not dialog.download_button.isEnabled() and dialog.pause_button.isEnabled()
    assert len(set(values)) >= 3 and values == sorted(values)
    assert dialog.progress_bar.value() == dialog.progress_bar.maximum()
    assert dialog.download_status.text().startswith("Downloaded and verified.")
    assert dialog.use_download_button.isEnabled()
    with qtbot.waitSignal(dialog.model_chosen) as chosen:
        qtbot.mouseClick(dialog.use_download_button, qtbot_button())
    assert chosen.args == ["hub", REAL_MODEL_ID]
    assert dialog.result() == ModelSetupDialog.DialogCode.Accepted


def test_cancel_from_the_dialog(make_dialog, fake_hub, qtbot, isolated_home):
    fake_hub.faults.chunk_delay_s = 0.02
    dialog = make_dialog()
    qtbot.mouseClick(dialog.download_button, qtbot_button())
    qtbot.waitUntil(lambda: dialog.progress_bar.value() > 100, timeout=timeout_ms(30))
    with qtbot.waitSignal(dialog.download.cancelled, timeout=timeout_ms(30)):
        qtbot.mouseClick(dialog.cancel_button, qtbot_button())
    assert dialog.download_status.text().startswith("Cancelled.")
    assert dialog.download_button.isEnabled() and dialog.download_button.text() == "Download DiffusionGemma 26B-A4B"
    assert not dialog.pause_button.isEnabled() and not dialog.use_download_button.isEnabled()
    assert list((isolated_home / "hf").rglob("*.incomplete")) == []


def test_pause_then_resume_from_the_dialog(make_dialog, fake_hub, qtbot):
    fake_hub.faults.chunk_delay_s = 0.02
    dialog = make_dialog()
    dialog.token_edit.setText("  ")
    qtbot.mouseClick(dialog.download_button, qtbot_button())
    qtbot.waitUntil(lambda: dialog.progress_bar.value() > 100, timeout=timeout_ms(30))
    with qtbot.waitSignal(dialog.download.paused, timeout=timeout_ms(30)):
        qtbot.mouseClick(dialog.pause_button, qtbot_button())
    assert dialog.download_button.text() == "Resume download" and dialog.download_button.isEnabled()
    assert dialog.download_status.text().startswith("Paused.")
    fake_hub.faults.chunk_delay_s = 0.0
    with qtbot.waitSignal(dialog.download.finished, timeout=timeout_ms(60)):
        qtbot.mouseClick(dialog.download_button, qtbot_button())
    assert fake_hub.gets_of("model.safetensors")[-1].startswith("bytes=")


def test_a_refused_download_says_why(make_dialog, qtbot):
    dialog = make_dialog(_report(24), **{TEST_DISK_FREE_ENV: "1000"})
    with qtbot.waitSignal(dialog.download.failed, timeout=timeout_ms(60)):
        qtbot.mouseClick(dialog.download_button, qtbot_button())
    assert dialog.download_status.text().startswith("Not enough free disk space")
    assert dialog.download_button.text() == "Download DiffusionGemma 26B-A4B" and dialog.download_button.isEnabled()


def test_a_gated_model_uses_the_token_field(make_dialog, fake_hub, qtbot):
    fake_hub.faults.token = "hf_secret"
    dialog = make_dialog()
    with qtbot.waitSignal(dialog.download.failed, timeout=timeout_ms(60)):
        qtbot.mouseClick(dialog.download_button, qtbot_button())
    assert "access token" in dialog.download_status.text()
    qtbot.keyClicks(dialog.token_edit, "hf_secret")
    with qtbot.waitSignal(dialog.download.finished, timeout=timeout_ms(60)):
        qtbot.mouseClick(dialog.download_button, qtbot_button())


def test_a_local_folder_is_accepted(make_dialog, tiny_model_dir, qtbot, monkeypatch):
    dialog = make_dialog()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args, **kwargs: str(tiny_model_dir))
    qtbot.mouseClick(dialog.findChild(QWidget, "browseButton"), qtbot_button())
    assert dialog.folder_edit.text() == str(tiny_model_dir)
    assert dialog.folder_result.text().startswith("\u2714 DiffusionGemma model with 1 weight file")
    assert dialog.use_folder_button.isEnabled()
    with qtbot.waitSignal(dialog.model_chosen) as chosen:
        qtbot.mouseClick(dialog.use_folder_button, qtbot_button())
    assert chosen.args == ["folder", str(tiny_model_dir)]


def test_a_broken_local_folder_is_rejected_with_the_reason(make_dialog, tiny_model_dir, tmp_path, qtbot):
    broken = Path(shutil.copytree(tiny_model_dir, tmp_path / "half-copied"))
    (broken / "tokenizer.json").unlink()
    dialog = make_dialog()
    qtbot.keyClicks(dialog.folder_edit, str(broken))
    dialog.folder_edit.editingFinished.emit()
    assert dialog.folder_result.text() == "\u2716 half-copied has no tokenizer (tokenizer.json is missing)."
    assert not dialog.use_folder_button.isEnabled()
    dialog.check_folder(str(tiny_model_dir))
    assert dialog.use_folder_button.isEnabled()


def test_the_demo_model_can_be_chosen(make_dialog, qtbot):
    dialog = make_dialog(_report(None))
    with qtbot.waitSignal(dialog.model_chosen) as chosen:
        qtbot.mouseClick(dialog.use_demo_button, qtbot_button())
    assert chosen.args == ["demo", ""]


class _Window(QWidget):
    def __init__(self):
        super().__init__()
        self.settings = Settings(model="/some/folder")
        self.applied: list[Settings] = []
        self._model_setup_window = None

    def apply_settings(self, settings: Settings, save: bool = True) -> None:
        self.applied.append(settings)
        self.settings = settings


@pytest.mark.qt_log_ignore("This plugin does not support (propagateSizeHints|raise)")
def test_open_model_setup_stores_the_choice_in_the_window_settings(qtbot, no_nvidia_smi):
    window = _Window()
    qtbot.addWidget(window)
    dialog = open_model_setup(window)
    window._model_setup_window = dialog
    try:
        assert dialog.current_label.text() == "Now using: /some/folder"
        assert open_model_setup(window) is dialog  # reopening brings back the same screen
        qtbot.mouseClick(dialog.use_demo_button, qtbot_button())
        assert window.applied == [dataclasses.replace(Settings(model="/some/folder"), model=None)]
    finally:
        dialog.shutdown()


def qtbot_button():
    from PySide6.QtCore import Qt

    return Qt.MouseButton.LeftButton


@pytest.mark.qt_log_ignore("This plugin does not support (propagateSizeHints|raise)")
def test_the_main_window_menu_opens_the_setup_screen_and_stores_the_folder(qtbot, tiny_model_dir, no_nvidia_smi):
    from app.worker.engine_client import EngineClient
    from app.window.main_window import MainWindow
    from app.chat.store import ChatStore

    store = ChatStore()
    client = EngineClient()
    window = MainWindow(Settings(), store, client)
    qtbot.addWidget(window)
    dialog = None
    try:
        assert window.model_setup_action.isEnabled()
        window.model_setup_action.trigger()
        dialog = window._model_setup_window
        assert isinstance(dialog, ModelSetupDialog) and dialog.isVisible()
        qtbot.waitUntil(lambda: dialog.report is not None, timeout=timeout_ms(30))
        dialog.folder_edit.setText(str(tiny_model_dir))
        dialog.check_folder(str(tiny_model_dir))
        qtbot.mouseClick(dialog.use_folder_button, qtbot_button())
        assert window.settings.model == str(tiny_model_dir)
        assert not dialog.isVisible()
    finally:
        if dialog is not None:
            dialog.shutdown()
        client.shutdown()
        window.close()
        store.close()


@pytest.mark.parametrize("gpu_gib", [24, None])
def test_the_dialog_opens_unclipped_at_its_default_size(make_dialog, qtbot, gpu_gib):
    """At its default size the layout fits: no title cut, no button text elided."""
    from PySide6.QtWidgets import QLabel, QPushButton

    dialog = make_dialog(_report(gpu_gib))
    dialog.show()
    qtbot.waitExposed(dialog)
    hint = dialog.minimumSizeHint()
    assert dialog.width() >= hint.width() and dialog.height() >= hint.height()
    for button in dialog.findChildren(QPushButton):
        if button.isVisible():
            assert button.width() >= button.sizeHint().width(), f"{button.text()!r} is elided"
    for label in dialog.findChildren(QLabel):
        if label.isVisible() and not label.wordWrap():
            assert label.width() >= label.minimumSizeHint().width(), f"{label.text()!r} is cut"


def test_readme_and_setup_screen_give_the_same_download_size():
    """One unit convention (GB as Windows shows them, 1024**3 bytes) and one figure everywhere."""
    import re

    import app.setup.dialog
    from tests.conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    (readme_gb,) = re.findall(r"diffusiongemma-26B-A4B-it` \(about (\d+) GB\)", readme)
    source = Path(app.setup.dialog.__file__).read_text(encoding="utf-8")
    (app_gb,) = re.findall(r"from Hugging Face, about (\d+) GB", source)
    assert readme_gb == app_gb
    assert "GiB" not in readme.split("## Fitting")[1].split("##")[0], "the README mixes GB and GiB"
