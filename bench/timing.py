"""Wall-clock figures: device synchronisation, repeated runs, and the median with its spread."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any


def synchronize(device: str) -> None:
    """Waits for queued GPU work, so a wall-clock interval covers the work it launched."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def figure(samples: list[float], unit: str, **extra: Any) -> dict[str, Any]:
    """The median of `samples` with its spread (p10/p90 and min/max) and the sample count."""
    if not samples:
        raise ValueError("a figure needs at least one sample")
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "p10": _quantile(ordered, 0.10),
        "p90": _quantile(ordered, 0.90),
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
        "unit": unit,
        **extra,
    }


def derived(value: float, unit: str, low: float, high: float, **extra: Any) -> dict[str, Any]:
    """A figure computed from other figures' medians; low/high come from their spreads."""
    return {"median": value, "low": min(low, high), "high": max(low, high), "unit": unit, "derived": True, **extra}


def _quantile(ordered: list[float], q: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def time_call(function: Callable[[], Any], device: str) -> tuple[float, Any]:
    """Seconds that one call takes, GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def repeat(function: Callable[[], Any], device: str, *, warmup: int, runs: int) -> list[float]:
    """Seconds per call over `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        time_call(function, device)
    return [time_call(function, device)[0] for _ in range(runs)]
