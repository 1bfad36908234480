"""User settings: a typed, versioned dataclass persisted as JSON in the config folder.

`load_settings()` never raises on a bad file: it falls back to defaults, keeps the bad file as
`settings.json.bak` and logs a warning. `save_settings()` writes atomically (temp file +
os.replace). Older files are upgraded by `MIGRATIONS`, one schema version at a time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, get_args

from engine import paths
from engine.protocol import GenerationSettings

log = logging.getLogger("canvas_chat.settings")

SCHEMA_VERSION = 2

PresetName = Literal["fast", "balanced", "quality", "custom"]
ThemeName = Literal["system", "light", "dark"]
DeviceName = Literal["auto", "cpu", "cuda"]
QuantizationName = Literal["auto", "none", "bf16", "nf4", "nf4-double"]

PRESET_NAMES: tuple[str, ...] = get_args(PresetName)
THEME_NAMES: tuple[str, ...] = get_args(ThemeName)
DEVICE_NAMES: tuple[str, ...] = get_args(DeviceName)
QUANTIZATION_NAMES: tuple[str, ...] = get_args(QuantizationName)


@dataclass(frozen=True)
class SamplingPreset:
    max_denoising_steps: int
    entropy_bound: float
    t_min: float
    t_max: float


# Quality is the checkpoint's generation config; Fast takes fewer steps and accepts more
# uncertain tokens per step (a larger entropy bound), trading some quality for speed.
PRESETS: dict[str, SamplingPreset] = {
    "quality": SamplingPreset(max_denoising_steps=48, entropy_bound=0.1, t_min=0.4, t_max=0.8),
    "balanced": SamplingPreset(max_denoising_steps=24, entropy_bound=0.3, t_min=0.4, t_max=0.8),
    "fast": SamplingPreset(max_denoising_steps=12, entropy_bound=0.8, t_min=0.3, t_max=0.7),
}
SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingPreset))


class SamplingChoice:
    """The preset and raw sampling values shared by `Settings` (the defaults for new chats) and
    `app.chat.chat_settings.ChatSettings` (one chat's own); mixed into frozen dataclasses that
    have the preset field and the `SAMPLING_FIELDS`, seed and max_new_tokens."""

    def with_preset(self, name: str) -> Any:
        """These settings with a named preset's sampling values (or just marked custom)."""
        if name == "custom":
            return dataclasses.replace(self, preset="custom")
        preset = PRESETS[name]
        return dataclasses.replace(self, preset=name, **dataclasses.asdict(preset))

    def with_sampling(self, **values: Any) -> Any:
        """Raw sampling values edited by hand; the preset follows (a match, or "custom")."""
        changed = dataclasses.replace(self, **values)
        return dataclasses.replace(changed, preset=changed.matching_preset())

    def matching_preset(self) -> str:
        for name, preset in PRESETS.items():
            if all(getattr(self, f) == getattr(preset, f) for f in SAMPLING_FIELDS):
                return name
        return "custom"

    def generation_settings(self) -> GenerationSettings:
        """The per-request settings the worker receives."""
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            max_denoising_steps=self.max_denoising_steps,
            entropy_bound=self.entropy_bound,
            t_min=self.t_min,
            t_max=self.t_max,
            seed=self.seed,
        )


@dataclass(frozen=True)
class Settings(SamplingChoice):
    schema_version: int = SCHEMA_VERSION
    system_prompt: str = ""
    preset: PresetName = "quality"
    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    max_new_tokens: int = 1024  # reply length
    seed: int | None = None  # None: a new random seed per reply
    theme: ThemeName = "system"
    reduced_motion: bool = False
    replay_speed: float = 1.0  # 1.0 = one draft frame per 1/30 s; see app.chat.replay
    model: str | None = None  # a folder or hub id; None: the default model
    device: DeviceName = "auto"
    quantization: QuantizationName = "auto"
    api_port: int = 1234  # the local API server (Model > Local server); it is off until turned on
    api_token: str = ""
    # A remote server (Model > Connect to a server); its API key lives in the OS keyring, not here.
    remote_enabled: bool = False
    remote_url: str = ""
    remote_model: str = ""
    remote_diffusiongemma: bool = True
    chat_panel_open: bool = True  # the chat's settings panel on the right of the window

    def problems(self) -> list[str]:
        """Reasons these values cannot be used; empty when they are fine."""
        found = self.generation_settings().problems()
        if self.replay_speed <= 0:
            found.append(f"replay speed must be positive (got {self.replay_speed})")
        return found


# ---------------------------------------------------------------------------- migrations


def _migrate_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    # Version 1 (the first preview) stored a dark_mode flag, "steps" and "reply_tokens".
    data = dict(data)
    dark = data.pop("dark_mode", None)
    if dark is not None and "theme" not in data:
        data["theme"] = "dark" if dark else "light"
    if "steps" in data:
        data.setdefault("max_denoising_steps", data.pop("steps"))
    if "reply_tokens" in data:
        data.setdefault("max_new_tokens", data.pop("reply_tokens"))
    return data


# MIGRATIONS[n] upgrades a version-n dict to version n + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _migrate_1_to_2}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"bad schema_version {version!r}")
    if version > SCHEMA_VERSION:
        log.warning(
            "settings file is from a newer Canvas Chat (schema %d > %d); using the fields this version knows",
            version,
            SCHEMA_VERSION,
        )
        return data
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](data)
        version += 1
    data["schema_version"] = SCHEMA_VERSION
    return data


# ---------------------------------------------------------------------------- (de)serialising


_FIELD_CHECKS: dict[str, Callable[[Any], bool]] = {
    "system_prompt": lambda v: isinstance(v, str),
    "preset": lambda v: v in PRESET_NAMES,
    "max_denoising_steps": lambda v: _is_int(v) and v > 0,
    "entropy_bound": lambda v: _is_number(v) and v > 0,
    "t_min": lambda v: _is_number(v) and v >= 0,
    "t_max": lambda v: _is_number(v) and v >= 0,
    "max_new_tokens": lambda v: _is_int(v) and v > 0,
    "seed": lambda v: v is None or (_is_int(v) and v >= 0),
    "theme": lambda v: v in THEME_NAMES,
    "reduced_motion": lambda v: isinstance(v, bool),
    "replay_speed": lambda v: _is_number(v) and v > 0,
    "model": lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
    "device": lambda v: v in DEVICE_NAMES,
    "quantization": lambda v: v in QUANTIZATION_NAMES,
    "api_port": lambda v: _is_int(v) and 1 <= v <= 65535,
    "api_token": lambda v: isinstance(v, str),
    "remote_enabled": lambda v: isinstance(v, bool),
    "remote_url": lambda v: isinstance(v, str),
    "remote_model": lambda v: isinstance(v, str),
    "remote_diffusiongemma": lambda v: isinstance(v, bool),
    "chat_panel_open": lambda v: isinstance(v, bool),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def settings_to_dict(settings: Settings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def settings_from_dict(data: dict[str, Any]) -> Settings:
    """Builds Settings from a (migrated) dict; a field with a bad value falls back to its default."""
    data = migrate(dict(data))
    values: dict[str, Any] = {}
    for name, check in _FIELD_CHECKS.items():
        if name not in data:
            continue
        value = data[name]
        if check(value):
            values[name] = float(value) if name in ("entropy_bound", "t_min", "t_max", "replay_speed") else value
        else:
            log.warning("settings: ignoring bad value %r for %s; using the default", value, name)
    settings = Settings(**values)
    if settings.t_max <= settings.t_min:
        log.warning("settings: t_max %s is not above t_min %s; using the default temperatures", settings.t_max, settings.t_min)
        settings = dataclasses.replace(settings, t_min=Settings.t_min, t_max=Settings.t_max)
    return settings


def load_settings(path: Path | None = None) -> Settings:
    """The saved settings, or defaults when there is no file or it cannot be used."""
    path = path or paths.settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        log.warning("cannot read settings file %s (%s); using defaults", path, exc)
        return Settings()
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the settings file does not hold a JSON object")
        return settings_from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        backup = path.with_name(path.name + ".bak")
        try:
            os.replace(path, backup)
        except OSError:
            backup = None
        log.warning(
            "settings file %s is corrupt (%s); using defaults%s",
            path,
            exc,
            f", the bad file is kept as {backup}" if backup else "",
        )
        return Settings()


def save_settings(settings: Settings, path: Path | None = None) -> None:
    """Writes the settings atomically; raises OSError when the disk refuses."""
    path = path or paths.settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(settings_to_dict(settings), indent=2, ensure_ascii=False) + "\n"
    descriptor, temp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        raise
