"""The hardware check: nvidia-smi parsing, the verdict rules, the GUI's torch-free probe, the CLI."""

from __future__ import annotations

import json
import subprocess

import pytest

import engine.hardware as engine_hw
from engine import machine
from tests.conftest import PYTHON, python_env

GIB = 1024**3
SMI_4090 = "0, NVIDIA GeForce RTX 4090, 8.9, 566.36, 24564, 23012\n"


def _gpu(total_gib: float, free_gib: float | None = None, cc: str | None = "8.9", name: str = "NVIDIA GeForce RTX 4090"):
    return {
        "index": 0,
        "name": name,
        "compute_capability": cc,
        "driver_version": "566.36",
        "total_vram_bytes": int(total_gib * GIB),
        "free_vram_bytes": int((total_gib if free_gib is None else free_gib) * GIB),
    }


def _verdict(module, gpu, plan=None, **overrides):
    kwargs = dict(
        cuda_available=True,
        ram_total_bytes=64 * GIB,
        disk_free_bytes=500 * GIB,
        disk_path="C:\\Users\\me\\.cache\\huggingface\\hub",
        model_downloaded=False,
    )
    kwargs.update(overrides)
    return module.make_verdict(gpu, plan or module.estimate_plan(), **kwargs)


def test_nvidia_smi_csv_is_parsed_into_bytes():
    (gpu,) = machine.parse_nvidia_smi_csv(SMI_4090)
    assert gpu["name"] == "NVIDIA GeForce RTX 4090"
    assert gpu["compute_capability"] == "8.9"
    assert gpu["driver_version"] == "566.36"
    assert gpu["total_vram_bytes"] == 24564 * 1024 * 1024
    assert gpu["free_vram_bytes"] == 23012 * 1024 * 1024


def test_no_gpu_means_the_demo_model():
    verdict = _verdict(engine_hw, None)
    assert verdict["code"] == "no_gpu"
    assert verdict["summary"] == "No NVIDIA GPU found: Canvas Chat will use the built-in demo model on the CPU."
    assert verdict["recommended"] == "demo"
    assert not verdict["can_run_real_model"]


def test_a_24_gb_card_can_run_the_real_model():
    verdict = _verdict(engine_hw, _gpu(23.99))
    assert verdict["code"] == "ok"
    assert verdict["summary"] == "This PC can run DiffusionGemma 26B-A4B (NF4, ~20 GB of 24 GB with image input)."
    assert verdict["recommended"] == "demo"  # not downloaded yet
    assert any("not downloaded" in note for note in verdict["notes"])
    assert _verdict(engine_hw, _gpu(23.99), model_downloaded=True)["recommended"] == "real"


@pytest.mark.parametrize("total", [8, 12, 16])
def test_small_cards_are_told_why_not(total):
    verdict = _verdict(engine_hw, _gpu(total))
    assert verdict["code"] == "not_enough_vram"
    assert verdict["summary"].startswith(f"{total} GB of VRAM is not enough for DiffusionGemma 26B-A4B")
    assert "demo model" in verdict["summary"]


def test_old_gpu_and_broken_cuda_are_named():
    old = _verdict(engine_hw, _gpu(24, cc="6.1", name="NVIDIA TITAN Xp"))
    assert old["code"] == "gpu_too_old" and "TITAN Xp" in old["summary"]
    broken = _verdict(engine_hw, _gpu(24), cuda_available=False)
    assert broken["code"] == "cuda_unavailable" and "driver 566.36" in broken["summary"]


def test_busy_gpu_low_disk_and_low_ram_become_notes():
    verdict = _verdict(engine_hw, _gpu(24, free_gib=6), disk_free_bytes=20 * GIB, ram_total_bytes=8 * GIB)
    assert verdict["code"] == "ok"
    notes = " ".join(verdict["notes"])
    assert "Only 6 GB of VRAM is free" in notes
    assert "20 GB is free at" in notes
    assert "8 GB of system memory" in notes


def test_the_planner_decides_when_it_is_there():
    twenty = engine_hw.planner_plan(22 * GIB)
    assert twenty is not None and twenty["source"] == "planner"
    assert _verdict(engine_hw, _gpu(22), twenty)["code"] == "ok"
    sixteen = engine_hw.planner_plan(16 * GIB)
    assert _verdict(engine_hw, _gpu(16), sixteen)["code"] == "not_enough_vram"
    shorter = dict(twenty, verdict="fits_shorter_context", max_context_tokens=4096)
    verdict = _verdict(engine_hw, _gpu(20), shorter)
    assert verdict["code"] == "ok_shorter_context" and "4,096 tokens" in verdict["summary"]


def test_the_verdict_counts_the_vision_tower_and_says_so():
    from engine.planner import plan
    from engine.real_config import load_config_dict

    planned = engine_hw.planner_plan(24 * GIB)
    config = load_config_dict(engine_hw.REAL_MODEL_ID)
    with_images, text_only = (plan(config, "nf4", 8192, 24 * GIB, vision=v) for v in (True, False))
    assert planned["total_bytes"] == with_images.total_bytes > text_only.total_bytes + planned["vision_bytes"]
    assert planned["vision_bytes"] > GIB  # the bf16 tower
    ok = _verdict(engine_hw, _gpu(24), planned)
    assert ok["code"] == "ok" and ok["summary"].endswith("with image input).")
    assert any(note.startswith("Planned with image input: the vision tower (about 1.1 GB)") for note in ok["notes"])
    # A card between the two: text chats fit, a chat with an image would not.
    between = (text_only.total_bytes + with_images.total_bytes) // 2
    verdict = _verdict(engine_hw, _gpu(between / GIB), engine_hw.planner_plan(between))
    assert verdict["code"] == "ok_without_images" and verdict["can_run_real_model"]
    assert "for text chats" in verdict["summary"] and "not with images" in verdict["summary"]


def test_the_fallback_estimate_matches_the_planner():
    planned = engine_hw.planner_plan(None)
    assert planned is not None
    assert abs(engine_hw.estimate_plan()["total_bytes"] - planned["total_bytes"]) < 0.02 * planned["total_bytes"]


def test_gui_probe_reads_nvidia_smi(fake_nvidia_smi):
    fake_nvidia_smi(SMI_4090)
    report = engine_hw.probe(use_torch=False)
    json.dumps(report)
    assert report["source"] == "gui"
    assert report["gpu"]["name"] == "NVIDIA GeForce RTX 4090"
    assert report["driver_version"] == "566.36"
    assert report["cuda_available"] is None
    assert report["verdict"]["code"] == "ok"
    assert report["disk_free_bytes"] > 0 and report["ram_total_bytes"] > 0


def test_old_drivers_without_compute_cap_still_work(fake_nvidia_smi):
    fake_nvidia_smi("0, NVIDIA GeForce RTX 3090, 470.00, 24576, 24000\n", no_compute_cap=True)
    report = engine_hw.probe(use_torch=False)
    assert report["gpu"]["name"] == "NVIDIA GeForce RTX 3090"
    assert report["gpu"]["compute_capability"] is None
    assert report["verdict"]["code"] == "ok"


def test_a_hanging_or_failing_nvidia_smi_is_a_note_not_a_crash(fake_nvidia_smi, monkeypatch):
    monkeypatch.setattr(machine, "NVIDIA_SMI_TIMEOUT_S", 0.5)
    fake_nvidia_smi(SMI_4090, hang_s=5)
    report = engine_hw.probe(use_torch=False)
    assert report["gpus"] == [] and "did not answer" in report["problems"][0]
    fake_nvidia_smi("", exit_code=9, stderr="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    report = engine_hw.probe(use_torch=False)
    assert report["gpus"] == [] and "couldn't communicate" in report["problems"][0]
    assert report["verdict"]["code"] == "no_gpu"


def test_no_nvidia_smi_means_no_gpu(no_nvidia_smi):
    report = engine_hw.probe(use_torch=False)
    assert report["gpus"] == [] and report["problems"] == []
    assert report["verdict"]["code"] == "no_gpu"


def test_gui_probe_never_imports_torch():
    code = (
        "import sys, engine.hardware as h; r = h.probe(use_torch=False); "
        "bad = [m for m in ('torch', 'transformers', 'PySide6') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([PYTHON, "-c", code], env=python_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_probe_with_torch_on_a_cpu_machine(no_nvidia_smi, monkeypatch):
    import torch

    # A CPU machine whatever this one is: the probe must not see a GPU through torch either.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = engine_hw.probe()
    json.dumps(report)
    assert report["source"] == "engine"
    assert report["cuda_available"] is False
    assert report["plan"]["source"] == "planner"
    assert report["verdict"]["code"] == "no_gpu"


def test_cli_prints_json_and_text(fake_nvidia_smi):
    fake_nvidia_smi(SMI_4090)
    result = subprocess.run(
        [PYTHON, "-m", "engine", "hardware", "--json", "--no-torch"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"]["summary"] == "This PC can run DiffusionGemma 26B-A4B (NF4, ~20 GB of 24 GB with image input)."
    text = subprocess.run(
        [PYTHON, "-m", "engine", "hardware", "--no-torch"], env=python_env(), capture_output=True, text=True, timeout=60
    )
    assert text.returncode == 0
    assert "GPU 0: NVIDIA GeForce RTX 4090, compute capability 8.9" in text.stdout


def test_the_recommended_model_is_the_real_one_only_when_it_can_run_and_is_there():
    plan = engine_hw.estimate_plan()
    kwargs = dict(cuda_available=None, ram_total_bytes=64 * GIB, disk_free_bytes=500 * GIB, disk_path="/")
    ready = {"verdict": engine_hw.make_verdict(_gpu(24), plan, model_downloaded=True, **kwargs)}
    assert engine_hw.recommended_model(ready) == "google/diffusiongemma-26B-A4B-it"
    not_there = {"verdict": engine_hw.make_verdict(_gpu(24), plan, model_downloaded=False, **kwargs)}
    assert engine_hw.recommended_model(not_there) is None
    no_gpu = {"verdict": engine_hw.make_verdict(None, plan, model_downloaded=True, **kwargs)}
    assert engine_hw.recommended_model(no_gpu) is None
