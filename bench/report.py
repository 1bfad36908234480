"""Markdown tables from a results JSON, for bench/README.md: `python -m bench table results.json`."""

from __future__ import annotations

from typing import Any


def _cell(fig: dict[str, Any], digits: int = 1) -> tuple[str, str]:
    low, high = (fig["p10"], fig["p90"]) if "p10" in fig else (fig["low"], fig["high"])
    return f"{fig['median']:,.{digits}f} {fig['unit']}", f"{low:,.{digits}f}–{high:,.{digits}f}"


def figures_table(results: dict[str, Any]) -> str:
    rows = ["| figure | median | spread (p10–p90) |", "|---|---|---|"]
    for dtype, data in results.get("dtypes", {}).items():
        d, a, b = data["diffusion"], data["autoregressive"], data["break_even"]
        for canvas, fig in d["decoder_forward_ms"].items():
            rows.append(f"| {dtype} decoder forward, canvas {canvas} | " + " | ".join(_cell(fig, 2)) + " |")
        for prompt, fig in d["encoder_forward_ms"].items():
            rows.append(f"| {dtype} encoder forward, {prompt}-token prompt | " + " | ".join(_cell(fig, 2)) + " |")
        for steps, fig in d["tokens_per_s"].items():
            rows.append(f"| {dtype} end to end, {steps} steps/canvas ({fig['tokens_per_forward']:.3g} tokens/forward) | "
                        + " | ".join(_cell(fig)) + " |")
        rows.append(f"| {dtype} AR ms per token | " + " | ".join(_cell(a["ms_per_token"], 2)) + " |")
        rows.append(f"| {dtype} AR tokens/s | " + " | ".join(_cell(a["tokens_per_s"])) + " |")
        if "tokens_per_forward" in b:
            rows.append(f"| {dtype} break-even tokens/forward (published 15–20) | "
                        + " | ".join(_cell(b["tokens_per_forward"], 2)) + " |")
    overhead = results.get("engine_overhead")
    if overhead:
        for key, label in (("worker_over_stock", "worker ÷ stock"), ("in_process_over_stock", "in-process ÷ stock")):
            rows.append(f"| engine overhead, {label}, wall time | " + " | ".join(_cell(overhead[key], 3)) + " |")
            rows.append(f"| engine overhead, {label}, CPU time | " + " | ".join(_cell(overhead["cpu_time"][key], 3)) + " |")
        rows.append("| engine overhead, worker ms added per step, CPU time | "
                    + " | ".join(_cell(overhead["cpu_time"]["worker_added_ms_per_step"], 2)) + " |")
    return "\n".join(rows)


def gpu_rows(results: dict[str, Any]) -> str:
    """Rows for the README's GPU table."""
    machine = results["machine"]
    rows = []
    for dtype, data in results.get("dtypes", {}).items():
        d, a, b = data["diffusion"], data["autoregressive"], data["break_even"]
        canvas = str(results["plan"]["canvas_length"])
        tps = " / ".join(f"{d['tokens_per_s'][s]['median']:,.0f}" for s in sorted(d["tokens_per_s"], key=int))
        encoder = d["encoder_forward_ms"].get("4096", {}).get("median", float("nan"))
        rows.append(
            f"| {machine.get('gpu') or machine['cpu']}, {machine.get('driver') or '-'} | {dtype} | "
            f"{d['decoder_forward_ms'][canvas]['median']:,.1f} | {encoder:,.1f} | {tps} | "
            f"{a['ms_per_token']['median']:,.2f} | {a['tokens_per_s']['median']:,.1f} | "
            f"{b.get('tokens_per_forward', {}).get('median', float('nan')):.2f} | 15–20 | {results['created'][:10]} |"
        )
    return "\n".join(rows)
