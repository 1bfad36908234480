"""The CPU benchmark suite end to end: `python -m bench run --suite cpu --size small`."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from tests.conftest import PYTHON, REPO_ROOT, TIMEOUT_SCALE, python_env

STEPS = ("8", "16", "24", "48")


def _figures(node, path="$"):
    """Every measured or derived figure in the results: dicts that carry a median."""
    if isinstance(node, dict):
        if "median" in node:
            yield path, node
        for key, value in node.items():
            yield from _figures(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _figures(value, f"{path}[{index}]")


def _numbers(node, path="$"):
    if isinstance(node, bool):
        return
    if isinstance(node, (int, float)):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _numbers(value, f"{path}[{index}]")


@pytest.fixture(scope="module")
def cpu_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        [PYTHON, "-m", "bench", "run", "--suite", "cpu", "--size", "small", "--out", str(out)],
        cwd=str(REPO_ROOT),
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=600 * TIMEOUT_SCALE,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_results_have_every_section(cpu_results):
    path, results = cpu_results
    assert path.with_suffix(".png").stat().st_size > 10_000
    assert results["schema"] == 1 and results["suite"] == "cpu" and results["size"] == "small"
    for key in ("platform", "cpu", "cpu_cores", "torch", "transformers", "device"):
        assert results["machine"][key], key
    overhead = results["engine_overhead"]
    for key in ("stock_generate_ms", "engine_in_process_ms", "engine_worker_ms", "worker_over_stock"):
        assert overhead[key]["n"] >= 3, key
    for key in ("stock_generate_ms", "engine_in_process_ms", "engine_worker_ms", "worker_over_stock"):
        assert overhead["cpu_time"][key]["n"] >= 3, key
    assert overhead["same_tokens_on_all_paths"] is True
    assert overhead["engine_worker_ms"]["drafts_received"]["median"] >= 1
    fp32 = results["dtypes"]["fp32"]
    assert set(fp32["diffusion"]["decoder_forward_ms"]) == {"64", "128", "256"}
    assert set(fp32["diffusion"]["encoder_forward_ms"]) == {"256", "1024", "4096"}
    assert set(fp32["diffusion"]["tokens_per_s"]) == set(STEPS)
    assert fp32["autoregressive"]["ms_per_token"]["unit"] == "ms"
    assert set(fp32["break_even"]["speedup_vs_ar"]) == set(STEPS)
    assert fp32["break_even"]["tokens_per_forward"]["median"] > 0
    assert fp32["break_even"]["published_tokens_per_forward"] == [15, 20]


@pytest.mark.slow
def test_every_figure_is_positive_and_finite(cpu_results):
    _, results = cpu_results
    figures = list(_figures(results))
    assert len(figures) >= 20
    for where, fig in figures:
        values = [fig[k] for k in ("median", "p10", "p90", "min", "max", "low", "high") if k in fig]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), where
        if not fig.get("signed"):
            assert all(v > 0 for v in values), (where, fig)
    for where, value in _numbers(results):
        assert math.isfinite(value), where


@pytest.mark.slow
def test_faster_with_fewer_steps(cpu_results):
    """Fewer denoising steps per canvas must mean more tokens/s: the one ordering noise cannot hide."""
    _, results = cpu_results
    tokens_per_s = results["dtypes"]["fp32"]["diffusion"]["tokens_per_s"]
    assert tokens_per_s["8"]["median"] > tokens_per_s["48"]["median"]


@pytest.mark.slow
def test_markdown_table_for_the_readme(cpu_results):
    from bench.report import figures_table, gpu_rows

    _, results = cpu_results
    table = figures_table(results)
    assert "fp32 decoder forward, canvas 256" in table and "break-even" in table
    assert gpu_rows(results).count("\n") == len(results["dtypes"]) - 1
