"""The results chart: tokens/s against denoising steps per canvas, with the AR baseline as a line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {"bf16": "#1f77b4", "nf4": "#d62728", "fp32": "#2ca02c"}
HOW_TO_GET_CHARTS = 'no chart: matplotlib is not installed (pip install ".[bench]" adds it)'


def can_draw() -> bool:
    """matplotlib comes with the bench extra only; without it the results JSON is still written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.machine import label

    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=110)
    canvas = results["plan"]["canvas_length"]
    all_values: list[float] = []
    for index, (dtype, data) in enumerate(results.get("dtypes", {}).items()):
        colour = COLOURS.get(dtype, None)
        per_steps = data["diffusion"]["tokens_per_s"]
        steps = sorted(int(s) for s in per_steps)
        medians = [per_steps[str(s)]["median"] for s in steps]
        low = [per_steps[str(s)]["median"] - per_steps[str(s)]["p10"] for s in steps]
        high = [per_steps[str(s)]["p90"] - per_steps[str(s)]["median"] for s in steps]
        ax.errorbar(steps, medians, yerr=[low, high], marker="o", capsize=4, color=colour,
                    label=f"DiffusionGemma {dtype} (fixed steps)")
        for s, m in zip(steps, medians):
            # Alternate above/below so two precisions' labels do not print over each other.
            ax.annotate(f"{m:,.0f}", (s, m), textcoords="offset points", xytext=(6, 6 if index % 2 == 0 else -13),
                        fontsize=8, color=colour)
        ar = data["autoregressive"]["tokens_per_s"]
        ax.axhline(ar["median"], linestyle="--", color=colour, alpha=0.9,
                   label=f"autoregressive Gemma 4 {dtype}: {ar['median']:,.0f} tokens/s")
        ax.axhspan(ar["low"], ar["high"], color=colour, alpha=0.12)
        all_values += medians + [ar["median"]]

    # Where the published 15-20 tokens per forward would put a real, adaptive run.
    published = results.get("published", {}).get("tokens_per_forward", [15, 20])
    ax.axvspan(canvas / published[1], canvas / published[0], color="#999999", alpha=0.15,
               label=f"published {published[0]}-{published[1]} tokens/forward")
    ax.set_xlabel(f"denoising steps per canvas of {canvas} tokens (adaptive stopping off)")
    ax.set_ylabel("tokens/s, end to end (median, p10-p90)")
    if all_values and max(all_values) / max(min(all_values), 1e-9) > 20:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlim(0, max(results["plan"]["steps_per_canvas"]) + 4)
    ticks = list(results["plan"]["steps_per_canvas"])
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{s}\n{canvas / s:.3g} tok/fwd" for s in ticks])
    size = "full-size 26B-A4B" if results["size"] == "full" else "tiny config"
    ax.set_title(f"DiffusionGemma vs autoregressive, random weights, {size}\n{label(results['machine'])}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
