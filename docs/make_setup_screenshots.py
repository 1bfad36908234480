"""Renders the model setup screen off-screen into docs/screenshots/setup-*.png.

    python docs/make_setup_screenshots.py

No GPU and no network needed: the hardware reports are fixed examples (an RTX 4090 PC and a
PC without an NVIDIA GPU), the rejected folder is a real check of a folder holding another
model's config, and the download in progress is the dialog fed the events a download process
sends (plan, progress) with the real checkpoint's size, since a 48 GB transfer cannot run here.
The tests drive the same dialog through real downloads from a local fake Hub.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
GIB = 1024**3

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(ROOT))


def report_rtx_4090() -> dict:
    from engine import hardware as hw

    gpu = {
        "index": 0,
        "name": "NVIDIA GeForce RTX 4090",
        "compute_capability": "8.9",
        "driver_version": "566.36",
        "total_vram_bytes": 24564 * 1024 * 1024,
        "free_vram_bytes": 22870 * 1024 * 1024,
    }
    return _report(hw, gpu, ram=64 * GIB, disk=412 * GIB)


def report_no_gpu() -> dict:
    from engine import hardware as hw

    return _report(hw, None, ram=16 * GIB, disk=120 * GIB)


def _report(hw, gpu, *, ram: int, disk: int) -> dict:
    plan = hw.estimate_plan()
    path = r"C:\Users\ada\.cache\huggingface\hub"
    return {
        "schema": 1,
        "source": "gui",
        "gpus": [gpu] if gpu else [],
        "gpu": gpu,
        "driver_version": gpu["driver_version"] if gpu else None,
        "cuda_available": None,
        "ram_total_bytes": ram,
        "ram_available_bytes": ram // 2,
        "disk_path": path,
        "disk_free_bytes": disk,
        "model_downloaded": False,
        "plan": plan,
        "verdict": hw.make_verdict(
            gpu, plan, cuda_available=None, ram_total_bytes=ram, disk_free_bytes=disk, disk_path=path, model_downloaded=False
        ),
        "problems": [],
    }


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="setup-shots-"))
    os.environ["CANVAS_CHAT_HOME"] = str(work / "home")
    # Shown in the dialog as the download's destination; nothing is written there.
    os.environ["HF_HOME"] = "/home/ada/.cache/huggingface"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

    from PySide6.QtWidgets import QApplication

    from app.setup.download_events import DownloadPlanned, DownloadProgress
    from engine.hub import REAL_MODEL_ID
    from app.setup.dialog import ModelSetupDialog
    from app.theme import LIGHT, apply_theme

    app = QApplication.instance() or QApplication([])
    apply_theme(app, LIGHT)
    OUT.mkdir(parents=True, exist_ok=True)

    def shoot(dialog, name: str) -> None:
        dialog.show()
        app.processEvents()
        # The dialog keeps its default size: the one a user sees first.
        app.processEvents()
        path = OUT / f"setup-{name}.png"
        dialog.grab().save(str(path))
        print(path.relative_to(ROOT))

    # 1. The verdict on a PC with a 24 GB card.
    dialog = ModelSetupDialog(report=report_rtx_4090())
    shoot(dialog, "verdict")
    dialog.close()

    # 2. No NVIDIA GPU: the demo model is the way; a folder with another model is rejected.
    other = work / "gemma-3-27b-it"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "gemma3"}')
    dialog = ModelSetupDialog(report=report_no_gpu())
    dialog.folder_edit.setText(str(other))
    dialog.check_folder(str(other))
    shoot(dialog, "no-gpu")
    dialog.close()

    # 3. A download in progress, as the download process reports it.
    dialog = ModelSetupDialog(report=report_rtx_4090())
    download = dialog.download
    dialog.token_edit.setText("hf_example_token")
    download.state = "running"
    download.state_changed.emit("running")
    total = 51_950_000_000
    download.planned.emit(DownloadPlanned(REAL_MODEL_ID, "0" * 40, 14, total, 0, total, 400 * GIB, 0))
    download.progressed.emit(
        DownloadProgress("downloading", "model-00004-of-00012.safetensors", 17_320_000_000, total, 41.6 * 1024**2, 794.0)
    )
    shoot(dialog, "download")
    download.state = "idle"
    dialog.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
