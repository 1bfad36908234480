"""`python -m app --self-test` as the installer's smoke test runs it: a subprocess, one JSON line."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import PYTHON, TIMEOUT_SCALE, python_env

pytestmark = pytest.mark.slow

REPLY = "Self-test reply from the real denoising loop."


def run_app(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "app", *args],
        env=python_env(QT_QPA_PLATFORM="offscreen", **env),
        capture_output=True,
        text=True,
        timeout=300 * TIMEOUT_SCALE,
    )


def test_self_test_drives_one_reply_through_the_real_window_and_worker(tiny_model_dir):
    result = run_app(
        "--self-test", "--model", str(tiny_model_dir), "--prompt", "Are you there?",
        CANVAS_CHAT_TEST_FORCE_REPLY=REPLY,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    report = json.loads(lines[0])
    assert report["reply"] == REPLY
    assert report["finish_reason"] == "eos"
    assert report["stats"]["new_tokens"] > 0 and report["stats"]["tokens_per_s"] > 0
    assert 0 < report["window_shown_s"] < 10 * TIMEOUT_SCALE
    assert report["model_ready_s"] >= report["window_shown_s"]


def test_self_test_fails_clearly_when_the_model_is_missing(tmp_path):
    missing = tmp_path / "no-model-here"
    result = run_app("--self-test", "--model", str(missing), "--timeout", "120")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "self-test failed: the engine reported model_not_found" in result.stderr


def test_without_a_gpu_or_weights_the_self_test_uses_the_demo_model_and_answers_right(tmp_path):
    no_tools = tmp_path / "empty-path"  # no nvidia-smi on PATH: a PC without an NVIDIA GPU
    no_tools.mkdir()
    result = run_app(
        "--self-test", "--prompt", "Tell me the capital of Peru.", PATH=str(no_tools), CUDA_VISIBLE_DEVICES=""
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["is_demo"] is True and report["device"] == "cpu"
    assert report["model"].endswith("demo-model")
    # A held-out question the shipped demo answers right at the app's default settings.
    assert report["reply"] == "The capital of Peru is Lima."
    assert report["finish_reason"] == "eos"
