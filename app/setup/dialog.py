"""The model setup screen: what this PC can run, and the three ways to get a model.

Shown on first run and from the Model menu. It states the hardware verdict, downloads
DiffusionGemma 26B-A4B into the Hugging Face cache (progress, pause/resume, cancel, token),
checks a local folder, or picks the built-in demo model. The choice leaves through
`model_chosen(kind, model)`; the window stores it in its settings.
"""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import dataclasses
import html
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QLayout,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.setup.download import ModelDownload
from app.setup.download_events import DownloadPlanned, DownloadProgress, format_bytes
from app.setup.model_choice import probe_hardware
from app.setup.partial_downloads import PartialDownloadsRow
from engine.hub import REAL_MODEL_ID, REAL_MODEL_NAME, hub_cache_dir, repo_storage_dir
from engine.hub_cache import PARTIAL_SUFFIX
from engine.model_folder import FolderCheck, check_model_folder

log = logging.getLogger("canvas_chat.model_setup")

TOKEN_PAGE = "https://huggingface.co/settings/tokens"
PROGRESS_STEPS = 1000

KIND_HUB = "hub"
KIND_FOLDER = "folder"
KIND_DEMO = "demo"


def _show(label: QLabel, text: str) -> None:
    """Sets a status line's text; an empty line takes no room."""
    label.setText(text)
    label.setVisible(bool(text))


class ModelSetupDialog(QDialog):
    """Chooses the model: download the real one, use a local folder, or use the demo.

    `model_chosen(kind, model)`: kind is "hub" (model = the hub id), "folder" (model = the
    folder path) or "demo" (model = ""; the window's default model is the demo). Closing the
    dialog while a download runs keeps it running in the background; `shutdown()` pauses it.
    """

    model_chosen = Signal(str, str)
    _probed = Signal(dict)  # from the probe thread; queued onto the GUI thread

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        settings: Any = None,
        report: dict[str, Any] | None = None,
        probe: Callable[[], dict[str, Any]] | None = None,
        download: ModelDownload | None = None,
    ):
        super().__init__(parent)
        self.setObjectName("modelSetupDialog")
        self.setWindowTitle("Model setup")
        self.settings = settings
        self.report: dict[str, Any] | None = None
        self.chosen: tuple[str, str] | None = None
        self.folder_check: FolderCheck | None = None
        self.download = download or ModelDownload(REAL_MODEL_ID, parent=self)
        if self.download.parent() is None:
            self.download.setParent(self)
        self._probe_thread: threading.Thread | None = None
        self._probed.connect(self._on_probe_thread_probed)

        layout = QVBoxLayout(self)
        layout.setSpacing(12)
        layout.addWidget(self._build_verdict())
        layout.addWidget(self._build_download())
        layout.addWidget(self._build_folder())
        layout.addWidget(self._build_demo())
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        # The layout decides the minimum (its buttons' full text included): a fixed 640 px
        # clipped the title and the download button on a default-sized dialog.
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        hint = layout.sizeHint()
        self.resize(max(640, hint.width()), hint.height())

        self.download.state_changed.connect(self._on_download_state_changed)
        self.download.progressed.connect(self._on_download_progressed)
        self.download.stage_changed.connect(self._on_download_stage_changed)
        self.download.planned.connect(self._on_download_planned)
        self.download.finished.connect(self._on_download_finished)
        self.download.failed.connect(self._on_download_failed)
        self.download.paused.connect(self._on_download_paused)
        self.download.cancelled.connect(self._on_download_cancelled)

        if report is not None:
            self.set_hardware_report(report)
        else:
            self._start_probe(probe or probe_hardware)
        self._refresh_download_buttons()

    # ------------------------------------------------------------------ layout

    def _build_verdict(self) -> QWidget:
        box = QFrame(self)
        self.verdict_box = box
        box.setObjectName("verdictBox")
        box.setFrameShape(QFrame.Shape.StyledPanel)
        inner = QVBoxLayout(box)
        self.verdict_label = QLabel("Checking this PC\u2026", box)
        self.verdict_label.setObjectName("verdictLabel")
        self.verdict_label.setWordWrap(True)
        font = self.verdict_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.2)
        font.setBold(True)
        self.verdict_label.setFont(font)
        self.notes_label = QLabel("", box)
        self.notes_label.setObjectName("verdictNotes")
        self.notes_label.setWordWrap(True)
        self.notes_label.setTextFormat(Qt.TextFormat.RichText)
        self.hardware_label = QLabel("", box)
        self.hardware_label.setObjectName("hardwareSummary")
        self.hardware_label.setWordWrap(True)
        self.hardware_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hardware_label.setEnabled(False)  # the palette's dim text
        inner.addWidget(self.verdict_label)
        inner.addWidget(self.notes_label)
        inner.addWidget(self.hardware_label)
        self.current_label = QLabel(self._current_model_text(), box)
        self.current_label.setObjectName("currentModel")
        inner.addWidget(self.current_label)
        return box

    def _build_download(self) -> QWidget:
        box = QGroupBox(f"Download {REAL_MODEL_NAME}", self)
        box.setObjectName("downloadBox")
        inner = QVBoxLayout(box)
        about = QLabel(
            f"<b>{REAL_MODEL_ID}</b> from Hugging Face, about 48 GB, into the Hugging Face cache "
            f"(<code>{html.escape(str(hub_cache_dir()))}</code>). Files already there are reused, "
            "and an interrupted download continues where it stopped.",
            box,
        )
        about.setWordWrap(True)
        about.setTextFormat(Qt.TextFormat.RichText)
        inner.addWidget(about)

        token_row = QHBoxLayout()
        token_label = QLabel("Hugging Face &token:", box)
        self.token_edit = QLineEdit(box)
        self.token_edit.setObjectName("tokenEdit")
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("hf_\u2026  (only for gated access; empty uses your saved login)")
        self.token_edit.setClearButtonEnabled(True)
        token_label.setBuddy(self.token_edit)
        token_link = QLabel(f'<a href="{TOKEN_PAGE}">Get a token</a>', box)
        token_link.setOpenExternalLinks(True)
        token_row.addWidget(token_label)
        token_row.addWidget(self.token_edit, 1)
        token_row.addWidget(token_link)
        inner.addLayout(token_row)

        buttons = QHBoxLayout()
        self.download_button = QPushButton(f"Download {REAL_MODEL_NAME}", box)
        self.download_button.setObjectName("downloadButton")
        self.download_button.clicked.connect(self._on_download_button_clicked)
        self.pause_button = QPushButton("Pause", box)
        self.pause_button.setObjectName("pauseButton")
        self.pause_button.clicked.connect(self._on_pause_button_clicked)
        self.cancel_button = QPushButton("Cancel download", box)
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.clicked.connect(self._on_cancel_button_clicked)
        self.use_download_button = QPushButton(f"Use {REAL_MODEL_NAME}", box)
        self.use_download_button.setObjectName("useDownloadButton")
        self.use_download_button.clicked.connect(self._on_use_download_button_clicked)
        buttons.addWidget(self.download_button)
        buttons.addWidget(self.pause_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        buttons.addWidget(self.use_download_button)
        inner.addLayout(buttons)

        self.progress_bar = QProgressBar(box)
        self.progress_bar.setObjectName("downloadProgress")
        self.progress_bar.setRange(0, PROGRESS_STEPS)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setVisible(False)
        self.progress_label = QLabel("", box)
        self.progress_label.setObjectName("downloadProgressLabel")
        self.download_status = QLabel("", box)
        self.download_status.setObjectName("downloadStatus")
        self.download_status.setWordWrap(True)
        self.download_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        inner.addWidget(self.progress_bar)
        inner.addWidget(self.progress_label)
        inner.addWidget(self.download_status)
        self.progress_label.setVisible(False)
        self.download_status.setVisible(False)

        self.partials_row = PartialDownloadsRow(box)
        self.partials_row.cleaned.connect(self._on_partials_row_cleaned)
        self.partials_label = self.partials_row.label
        self.clean_partials_button = self.partials_row.clean_button
        inner.addWidget(self.partials_row)
        return box

    def _build_folder(self) -> QWidget:
        box = QGroupBox("Use a local folder", self)
        box.setObjectName("folderBox")
        inner = QVBoxLayout(box)
        row = QHBoxLayout()
        self.folder_edit = QLineEdit(box)
        self.folder_edit.setObjectName("folderEdit")
        self.folder_edit.setPlaceholderText("A folder with config.json, *.safetensors and tokenizer.json")
        self.folder_edit.editingFinished.connect(self._on_folder_edit_editing_finished)
        browse = QPushButton("&Browse\u2026", box)
        browse.setObjectName("browseButton")
        browse.clicked.connect(self._on_browse_button_clicked)
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        inner.addLayout(row)
        self.folder_result = QLabel("", box)
        self.folder_result.setObjectName("folderResult")
        self.folder_result.setWordWrap(True)
        self.folder_result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        inner.addWidget(self.folder_result)
        self.folder_result.setVisible(False)
        use_row = QHBoxLayout()
        use_row.addStretch(1)
        self.use_folder_button = QPushButton("Use this folder", box)
        self.use_folder_button.setObjectName("useFolderButton")
        self.use_folder_button.setEnabled(False)
        self.use_folder_button.clicked.connect(self._on_use_folder_button_clicked)
        use_row.addWidget(self.use_folder_button)
        inner.addLayout(use_row)
        return box

    def _build_demo(self) -> QWidget:
        box = QGroupBox("Use the demo model", self)
        box.setObjectName("demoBox")
        inner = QHBoxLayout(box)
        text = QLabel(
            "A tiny DiffusionGemma built into Canvas Chat. It runs on any PC, on the CPU, and knows "
            "only toy skills (small sums, capitals, colours, word games): a way to watch the "
            "denoising, not to get real answers.",
            box,
        )
        text.setWordWrap(True)
        self.use_demo_button = QPushButton("Use the demo model", box)
        self.use_demo_button.setObjectName("useDemoButton")
        self.use_demo_button.clicked.connect(self._on_use_demo_button_clicked)
        inner.addWidget(text, 1)
        inner.addWidget(self.use_demo_button, 0, Qt.AlignmentFlag.AlignVCenter)
        return box

    # ------------------------------------------------------------------ hardware

    def _start_probe(self, probe: Callable[[], dict[str, Any]]) -> None:
        # A plain daemon thread, not a QThread: nvidia-smi may take seconds, and the app must be
        # able to quit (and this dialog to be deleted) while it runs.
        def run() -> None:
            try:
                report = probe()
            except Exception as exc:  # noqa: BLE001 - a failed probe is shown, not raised
                log.exception("hardware probe failed")
                report = {"verdict": {"code": "unknown", "summary": f"The hardware check failed ({exc}).", "notes": []}}
            try:
                self._probed.emit(report)
            except RuntimeError:
                pass  # the dialog is gone

        self._probe_thread = threading.Thread(target=run, name="hardware-probe", daemon=True)
        self._probe_thread.start()

    def _on_probe_thread_probed(self, report: dict[str, Any]) -> None:
        # A report from the worker (richer: torch's CUDA check) may have arrived first.
        if self.report is None or self.report.get("source") == "gui":
            self.set_hardware_report(report)

    def set_hardware_report(self, report: dict[str, Any]) -> None:
        """Shows a hardware report: the GUI's own, or the worker's `HardwareReport.report`."""
        self.report = report
        verdict = report.get("verdict") or {}
        can_run = bool(verdict.get("can_run_real_model"))
        self.verdict_label.setText(str(verdict.get("summary") or "The hardware check gave no answer."))
        notes = [html.escape(str(note)) for note in verdict.get("notes") or []]
        self.notes_label.setText("<br>".join(f"\u2022 {note}" for note in notes))
        self.notes_label.setVisible(bool(notes))
        self.hardware_label.setText(describe_hardware(report))
        self._style_verdict(can_run)
        # The button Enter presses: the download where the real model can run, else the demo.
        (self.download_button if can_run else self.use_demo_button).setDefault(True)
        (self.use_demo_button if can_run else self.download_button).setDefault(False)
        if report.get("model_downloaded") and self.download.state == "idle":
            self._status(f"{REAL_MODEL_NAME} is already in the Hugging Face cache.")
        self._refresh_download_buttons()

    def _style_verdict(self, can_run: bool) -> None:
        colour = "#2e9d5b" if can_run else "#d08a1e"
        self.verdict_box.setStyleSheet(
            f"#verdictBox {{ border: 1px solid palette(mid); border-left: 5px solid {colour}; border-radius: 6px; }}"
        )

    def _current_model_text(self) -> str:
        model = getattr(self.settings, "model", None)
        if not model:
            return "Now using: the default model (the built-in demo unless you choose another)."
        return f"Now using: {model}"

    # ------------------------------------------------------------------ download

    def _on_download_button_clicked(self) -> None:
        self._status("Contacting Hugging Face\u2026")
        self.progress_bar.setVisible(True)
        self.download.start(self.token_edit.text())

    def _on_pause_button_clicked(self) -> None:
        self.download.pause()

    def _on_cancel_button_clicked(self) -> None:
        self.download.cancel()

    def _on_use_download_button_clicked(self) -> None:
        self._choose(KIND_HUB, REAL_MODEL_ID)

    def _on_download_state_changed(self, state: str) -> None:
        texts = {
            "running": "Downloading\u2026 (it continues in the background if you close this window)",
            "pausing": "Pausing\u2026",
            "cancelling": "Cancelling\u2026",
        }
        if state in texts:
            self._status(texts[state])
        self._refresh_download_buttons()

    def _on_download_stage_changed(self, stage: str, message: str) -> None:
        if stage in ("verifying", "finalizing") or message.startswith("Connection lost"):
            self._status(message + "\u2026")

    def _on_download_planned(self, plan: DownloadPlanned) -> None:
        total, present = plan.total_bytes, plan.present_bytes
        self._show_progress(present, total)
        if present:
            self._status(f"Continuing: {format_bytes(present)} of {format_bytes(total)} are already on this PC.")

    def _on_download_progressed(self, progress: DownloadProgress) -> None:
        self._show_progress(progress.done_bytes, progress.total_bytes)
        _show(self.progress_label, progress.describe())

    def _status(self, text: str, *, error: bool = False) -> None:
        _show(self.download_status, text)
        self.download_status.setProperty("error", error)
        self.download_status.setStyleSheet("#downloadStatus { color: #c0392b; }" if error else "")

    def _show_progress(self, done: int, total: int) -> None:
        self.progress_bar.setVisible(True)
        self.progress_bar.setValue(int(PROGRESS_STEPS * done / total) if total else 0)

    def _on_download_finished(self, path: str) -> None:
        self.progress_bar.setValue(PROGRESS_STEPS)
        self._status(f"Downloaded and verified. {REAL_MODEL_NAME} is ready to use.")
        if self.report is not None:
            self.report = dict(self.report, model_downloaded=True)
        self.use_download_button.setDefault(True)
        self._refresh_download_buttons()

    def _on_download_failed(self, code: str, message: str) -> None:
        self._status(message, error=True)
        if code in ("gated", "unauthorized", "not_found"):
            self.token_edit.setFocus()
        self._refresh_download_buttons()

    def _on_download_paused(self) -> None:
        self._status("Paused. What arrived so far is kept: press Resume to continue.")
        self._refresh_download_buttons()

    def _on_download_cancelled(self) -> None:
        self._status("Cancelled. Files that were complete stay in the Hugging Face cache and will be reused.")
        self.progress_bar.setVisible(False)
        _show(self.progress_label, "")
        self._refresh_download_buttons()

    def _refresh_download_buttons(self) -> None:
        state = self.download.state
        running = state in ("running", "pausing", "cancelling")
        downloaded = state == "done" or bool(self.report and self.report.get("model_downloaded"))
        resumable = state == "paused" or (state != "cancelled" and self._has_partial_download())
        self.download_button.setText("Resume download" if resumable and state != "done" else f"Download {REAL_MODEL_NAME}")
        self.download_button.setEnabled(not running and state != "done")
        self.token_edit.setEnabled(not running)
        self.pause_button.setEnabled(state == "running")
        self.cancel_button.setEnabled(state in ("running", "pausing") or state in ("paused", "failed"))
        self.use_download_button.setEnabled(downloaded and not running)
        self.partials_row.refresh(busy=running)

    def _on_partials_row_cleaned(self, message: str, failed: bool) -> None:
        if message:
            self._status(message, error=failed)
        self._refresh_download_buttons()

    def _has_partial_download(self) -> bool:
        blobs = repo_storage_dir(REAL_MODEL_ID) / "blobs"
        try:
            return any(blobs.glob("*" + PARTIAL_SUFFIX))
        except OSError:
            return False

    # ------------------------------------------------------------------ local folder

    def _on_browse_button_clicked(self) -> None:
        start = self.folder_edit.text() or str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Choose a DiffusionGemma model folder", start)
        if folder:
            self.folder_edit.setText(folder)
            self.check_folder(folder)

    def _on_folder_edit_editing_finished(self) -> None:
        text = self.folder_edit.text().strip()
        if text and (self.folder_check is None or str(self.folder_check.folder) != str(Path(text).expanduser())):
            self.check_folder(text)

    def check_folder(self, folder: str) -> FolderCheck:
        """Validates `folder` and shows the result; 'Use this folder' follows it."""
        check = check_model_folder(folder)
        self.folder_check = check
        mark = "\u2714" if check.ok else "\u2716"
        _show(self.folder_result, f"{mark} {check.message}")
        colour = "#2e9d5b" if check.ok else "#c0392b"
        self.folder_result.setStyleSheet(f"#folderResult {{ color: {colour}; }}")
        self.use_folder_button.setEnabled(check.ok)
        return check

    def _on_use_folder_button_clicked(self) -> None:
        if self.folder_check is not None and self.folder_check.ok:
            self._choose(KIND_FOLDER, str(self.folder_check.folder))

    # ------------------------------------------------------------------ demo and the choice

    def _on_use_demo_button_clicked(self) -> None:
        self._choose(KIND_DEMO, "")

    def _choose(self, kind: str, model: str) -> None:
        self.chosen = (kind, model)
        self.model_chosen.emit(kind, model)
        self.accept()

    # ------------------------------------------------------------------ closing

    def shutdown(self) -> None:
        """Pauses a running download (partial files are kept) and stops the hardware probe."""
        self.download.shutdown()
        if self._probe_thread is not None:
            self._probe_thread.join(timeout=30)


def describe_hardware(report: dict[str, Any]) -> str:
    """One line of facts under the verdict: GPU, driver, VRAM, RAM, free disk."""
    gib = 1024**3
    parts = []
    gpu = report.get("gpu")
    if gpu:
        text = str(gpu.get("name") or "NVIDIA GPU")
        if gpu.get("total_vram_bytes"):
            text += f", {gpu['total_vram_bytes'] / gib:.0f} GB VRAM"
            if gpu.get("free_vram_bytes") is not None:
                text += f" ({gpu['free_vram_bytes'] / gib:.0f} GB free)"
        if gpu.get("compute_capability"):
            text += f", compute {gpu['compute_capability']}"
        parts.append(text)
    else:
        parts.append("No NVIDIA GPU")
    if report.get("driver_version"):
        parts.append(f"driver {report['driver_version']}")
    if report.get("ram_total_bytes"):
        parts.append(f"{report['ram_total_bytes'] / gib:.0f} GB RAM")
    if report.get("disk_free_bytes") is not None:
        parts.append(f"{report['disk_free_bytes'] / gib:.0f} GB free disk")
    return " \u00b7 ".join(parts)


def settings_model_for(kind: str, model: str) -> str | None:
    """What `Settings.model` should hold for a choice (None: the default, i.e. the demo)."""
    return None if kind == KIND_DEMO else model


def open_model_setup(window: Any) -> ModelSetupDialog:
    """Opens (or brings back) the setup screen for the main window and applies the choice.

    `app.window.main_window.MainWindow.open_model_setup` calls this when it exists.
    """
    dialog = getattr(window, "_model_setup_window", None)
    if not isinstance(dialog, ModelSetupDialog):
        dialog = ModelSetupDialog(window, settings=getattr(window, "settings", None))

        def apply(kind: str, model: str) -> None:
            settings = getattr(window, "settings", None)
            if settings is not None and hasattr(window, "apply_settings"):
                window.apply_settings(dataclasses.replace(settings, model=settings_model_for(kind, model)))

        dialog.model_chosen.connect(apply)
    dialog.open()
    dialog.raise_()
    dialog.activateWindow()
    return dialog
