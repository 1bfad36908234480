"""bench/fused_kernel.py at its small size on the CPU: the stock NF4 and fp32 forwards are timed, and the
fused variants are reported as skipped with the reason (no CUDA GPU here)."""

from __future__ import annotations

import json


def test_fused_kernel_bench_small_on_cpu(capsys, monkeypatch, tmp_path):
    from bench import fused_kernel

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    status = fused_kernel.main(["--size", "small", "--device", "cpu", "--repeats", "1", "--prompt-tokens", "16",
                                "--canvas", "16", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert [run["variant"] for run in report["runs"]] == ["nf4 stock", "fp32"]
    for run in report["runs"]:
        assert run["decoder_canvas"] == 16
        assert run["tokens_per_s_at_16_steps"] == round(16 * 1000 / (16 * run["decoder_ms_median"]), 1)
    assert report["skipped"] == ["nf4 fused experts: the model is on cpu, not a CUDA GPU",
                                 "nf4 fused all: the model is on cpu, not a CUDA GPU"]
    # What bench/gpu_check.sh prints from the JSON: the device, each variant's ms and tokens/s, the skips.
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    assert fused_kernel.main(["--render", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("small architecture on cpu")
    stock = next(line for line in lines if "nf4 stock" in line)
    assert f"{report['runs'][0]['decoder_ms_median']} ms/forward" in stock
    assert f"{report['runs'][0]['tokens_per_s_at_16_steps']} tokens/s" in stock
    assert sum("skipped nf4 fused" in line for line in lines) == 2
