"""The memory planner: parameter counts against the modeling code, and the real model's verdicts."""

from __future__ import annotations

import json
import subprocess

import pytest

from engine.planner import GIB, architecture_from_config, parse_memory, plan
from engine.real_config import REAL_MODEL_ID, load_config_dict, resolve_config_path
from tests.conftest import PYTHON, REPO_ROOT, python_env


def _meta_counts(config_dict):
    import torch
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    config = DiffusionGemmaConfig.from_dict(dict(config_dict))
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    total = experts = vision = 0
    for name, param in model.named_parameters():  # remove_duplicate: tied text weights count once
        total += param.numel()
        if ".experts." in name:
            experts += param.numel()
        if "vision_tower" in name or "embed_vision" in name:
            vision += param.numel()
    return total, experts, vision


def test_shipped_config_resolves_offline_and_counts_like_the_real_model():
    path = resolve_config_path(REAL_MODEL_ID)
    assert path.is_file() and "resources" in path.parts
    config = load_config_dict(REAL_MODEL_ID)
    total, experts, vision = _meta_counts(config)
    assert total == pytest.approx(25.8e9, rel=0.01)
    assert experts == pytest.approx(22.8e9, rel=0.01)
    assert vision == pytest.approx(0.57e9, rel=0.02)
    arch = architecture_from_config(config)
    assert (arch.total, arch.experts, arch.vision_total) == (total, experts, vision)
    # KV cache figures of MODEL_NOTES: 204,800 B/token on sliding layers, 20,480 B/token on full ones.
    assert arch.sliding_kv_bytes_per_token == 204_800
    assert arch.full_kv_bytes_per_token == 20_480


def test_architecture_counts_match_the_tiny_model():
    from tests.tiny_model import tiny_config

    config = tiny_config(vocab_size=600).to_dict()
    total, experts, vision = _meta_counts(config)
    arch = architecture_from_config(config)
    assert (arch.total, arch.experts, arch.vision_total) == (total, experts, vision)


@pytest.mark.parametrize(
    ("quantization", "verdict"),
    [("nf4", "fits"), ("nf4-double", "fits"), ("bf16", "does_not_fit"), ("bnb-stock", "does_not_fit")],
)
def test_real_model_on_a_24_gb_card_at_8k(quantization, verdict):
    result = plan(load_config_dict(REAL_MODEL_ID), quantization, 8192, parse_memory("24GB"))
    assert result.verdict == verdict, result.reason
    if quantization.startswith("nf4"):
        assert result.weights_bytes <= 16e9
    if quantization == "bnb-stock":
        assert result.weights_bytes > 45 * GIB  # MODEL_NOTES: ~50.8 GB left in bf16


def test_long_context_gets_a_shorter_context_and_small_cards_do_not_fit():
    config = load_config_dict(REAL_MODEL_ID)
    long = plan(config, "nf4", 131_072, 24 * GIB)
    assert long.verdict == "fits_shorter_context"
    assert 8192 <= long.max_context_tokens < 131_072
    assert plan(config, "nf4", long.max_context_tokens, 24 * GIB).verdict == "fits"
    small = plan(config, "nf4", 8192, 12 * GIB)
    assert small.verdict == "does_not_fit" and "weights" in small.reason


def test_parse_memory():
    assert parse_memory("24GB") == parse_memory("24 GiB") == 24 * GIB
    assert parse_memory("24576MiB") == 24 * GIB
    with pytest.raises(ValueError):
        parse_memory("lots")


def test_plan_command_json_offline_without_torch():
    command = [PYTHON, "-c", (
        "import sys; from engine.__main__ import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'planner imported torch'; sys.exit(rc)"
    ), "plan", "--model", REAL_MODEL_ID, "--gpu-memory", "24GB", "--context", "8192", "--json"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=python_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == "fits" and report["fits"] is True
    assert report["weights_gb"] <= 16
    for quantization in ("bf16", "bnb-stock"):
        done = subprocess.run(command + ["--quantization", quantization], cwd=REPO_ROOT, env=python_env(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert json.loads(done.stdout)["verdict"] == "does_not_fit"


def test_plan_reads_a_local_model_folder(tiny_model_dir, capsys):
    from engine.planner import cli_main

    assert cli_main(["--model", str(tiny_model_dir), "--gpu-memory", "1GB", "--context", "2048", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "fits" and report["canvas_length"] == 16


def test_plan_rejects_an_unknown_model(capsys):
    from engine.planner import cli_main

    assert cli_main(["--model", "nobody/no-such-model"]) == 2
    assert "no config" in capsys.readouterr().err


def test_plan_names_a_tiny_models_parameters_not_zero_billion(capsys):
    from engine.planner import cli_main

    assert cli_main(["--model", str(REPO_ROOT / "resources" / "demo-model"), "--gpu-memory", "1GB"]) == 0
    out = capsys.readouterr().out
    assert "0.00 B" not in out
    assert "(1.55 M parameters loaded)" in out


def test_plan_without_gpu_memory_on_a_pc_without_a_gpu_says_what_it_assumes(capsys, monkeypatch):
    import engine.machine
    from engine.planner import cli_main

    monkeypatch.setattr(engine.machine, "nvidia_smi_path", lambda *args: None)
    assert cli_main(["--model", REAL_MODEL_ID, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["gpu_free_bytes"] == 24 * GIB
    assert "no NVIDIA GPU found" in captured.err and "assuming a 24 GB card" in captured.err
    assert "--gpu-memory" in captured.err
