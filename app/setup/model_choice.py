"""Which model the app starts with when the user has not picked one, and why in plain words."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from app.settings import Settings
from engine import hardware
from engine.hub import REAL_MODEL_NAME


def probe_hardware() -> dict[str, Any]:
    """The GUI's hardware check, before the worker is up: nvidia-smi, RAM, disk and the plan, no torch."""
    return hardware.probe(use_torch=False)


def demo_model_path() -> Path | None:
    """The built-in demo model folder, if this install has one."""
    try:
        import importlib.resources

        folder = importlib.resources.files("resources") / "demo-model"
    except (ModuleNotFoundError, TypeError):
        return None
    path = Path(str(folder))
    return path if (path / "config.json").is_file() else None


@dataclass(frozen=True)
class ModelChoice:
    """Which model the app starts with when the user has not picked one, and why."""

    model: str | None
    reason: str
    is_demo: bool


def choose_model(settings: Settings, probe: Callable[[], dict[str, Any]] | None = None) -> ModelChoice:
    """The settings' model; else the real model where this PC can run it and it is downloaded;
    else the built-in demo model on the CPU, with the reason in plain words."""
    if settings.model:
        return ModelChoice(settings.model, "chosen in Model setup", False)
    report = (probe or probe_hardware)()
    real = hardware.recommended_model(report)
    if real is not None:
        return ModelChoice(real, "your GPU can run it and it is downloaded", False)
    verdict = report.get("verdict") or {}
    if verdict.get("code") in hardware.RUNNABLE_CODES:
        reason = (
            f"{REAL_MODEL_NAME} is not downloaded yet: "
            "open Model \u25b8 Model setup\u2026 to get it."
        )
    else:
        reason = verdict.get("summary") or "no usable NVIDIA GPU was found."
    demo = demo_model_path()
    return ModelChoice(str(demo) if demo is not None else None, reason, True)


def default_model(settings: Settings, probe: Callable[[], dict[str, Any]] | None = None) -> str | None:
    """The model to start with: see choose_model."""
    return choose_model(settings, probe).model
