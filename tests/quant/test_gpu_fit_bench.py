"""bench/gpu_fit.py at its small size on the CPU (the full size needs a CUDA GPU)."""

from __future__ import annotations

import json


def test_gpu_fit_small_on_cpu(capsys):
    from bench import gpu_fit

    status = gpu_fit.main(["--size", "small", "--device", "cpu", "--quantization", "nf4,bf16",
                           "--repeats", "1", "--prompt-tokens", "32", "--canvas", "16", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert [run["quantization"] for run in report["runs"]] == ["nf4", "bf16"]
    for run in report["runs"]:
        assert run["decoder_ms_median"] > 0 and run["encoder_ms_median"] > 0
        assert run["decoder_canvas"] == 16 and run["encoder_prompt_tokens"] == 32
    assert report["skipped"] == []


def test_gpu_fit_builds_a_fully_quantized_model():
    import torch

    from bench.gpu_fit import build_random, make_config
    from engine.quantization import quantized_modules

    model = build_random(make_config("small"), torch.device("cpu"), "nf4-double")
    report = quantized_modules(model)
    assert report["not_quantized"] == [] and report["quantized"]
