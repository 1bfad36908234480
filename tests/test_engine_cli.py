"""`python -m engine generate` gives exactly the tokens of transformers' own generate()."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import PYTHON, python_env


def run_cli(*args: str) -> subprocess.CompletedProcess:
    # On the CPU, as the stock fp32 run it is compared with ("auto" would pick a GPU in bf16).
    return subprocess.run(
        [PYTHON, "-m", "engine", "generate", "--device", "cpu", *args],
        capture_output=True, text=True, env=python_env(), timeout=300,
    )


def stock_generate(model_dir, prompt: str, seed: int, **kwargs) -> list[int]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    input_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    torch.manual_seed(seed)
    sequences = model.generate(input_ids, **kwargs).sequences[0, input_ids.shape[1] :].tolist()
    return [t for t in sequences if t != model.generation_config.pad_token_id]


@pytest.mark.parametrize("seed", [0, 21])
def test_cli_token_ids_equal_stock_generate_over_several_canvases(tiny_model_dir, seed):
    result = run_cli(
        "--model", str(tiny_model_dir), "--prompt", "Why is the sky blue?", "--seed", str(seed),
        "--max-new-tokens", "48", "--steps", "6", "--entropy-bound", "0.3", "--json",
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()  # exactly one JSON object on stdout
    output = json.loads(line)
    expected = stock_generate(
        tiny_model_dir, "Why is the sky blue?", seed, max_new_tokens=48, max_denoising_steps=6,
        sampler_config=__import__(
            "transformers.models.diffusion_gemma.generation_diffusion_gemma", fromlist=["EntropyBoundSamplerConfig"]
        ).EntropyBoundSamplerConfig(entropy_bound=0.3),
    )
    assert output["canvases"] >= 2
    assert output["token_ids"] == expected
    assert output["new_tokens"] == len(expected)
    assert output["finish_reason"] in ("eos", "length")
    for key in ("text", "time_to_first_draft_s", "wall_s", "tokens_per_s", "decoder_forwards",
                "tokens_per_forward", "steps_per_canvas"):
        assert key in output


def test_cli_settings_default_to_the_model_folder_generation_config(tiny_model_dir):
    result = run_cli("--model", str(tiny_model_dir), "--prompt", "Hello", "--seed", "5", "--json")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    # The tiny folder's generation config: one 16-token canvas, 8 denoising steps at most.
    assert output["token_ids"] == stock_generate(tiny_model_dir, "Hello", 5)
    assert output["canvases"] == 1 and output["decoder_forwards"] <= 8


def test_cli_reports_a_broken_model_folder_plainly(tmp_path):
    result = run_cli("--model", str(tmp_path / "nothing-here"), "--prompt", "Hi", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "No model folder" in result.stderr


def test_cli_refuses_an_empty_prompt_plainly(tiny_model_dir):
    result = run_cli("--model", str(tiny_model_dir), "--prompt", "  ", "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == 'error: the prompt is empty: pass the question, e.g. --prompt "What is 3 + 4?"'


def test_cli_tells_how_to_download_a_model_in_command_line_terms():
    result = run_cli("--model", "google/gemma-2b", "--prompt", "Hi")
    assert result.returncode == 1
    assert "hf download google/gemma-2b" in result.stderr
    assert "Open Model setup" not in result.stderr
