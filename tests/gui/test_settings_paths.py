"""Settings round-trip, presets, migration, corrupt files; every user path under CANVAS_CHAT_HOME."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from engine import paths
from app.settings import (
    PRESETS,
    SCHEMA_VERSION,
    Settings,
    load_settings,
    save_settings,
    settings_from_dict,
)


def test_every_path_is_under_the_isolated_home(isolated_home):
    for folder in (paths.data_dir(), paths.config_dir(), paths.log_dir(), paths.models_dir()):
        assert folder.is_dir()
        assert folder.is_relative_to(isolated_home)
    assert paths.database_path().parent == paths.data_dir()
    assert paths.settings_path().parent == paths.config_dir()
    assert len({paths.data_dir(), paths.config_dir(), paths.log_dir(), paths.models_dir()}) == 4


def test_without_override_paths_come_from_platformdirs(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.HOME_ENV)
    monkeypatch.setattr(paths.platformdirs, "user_data_dir", lambda *a, **k: str(tmp_path / "data"))
    monkeypatch.setattr(paths.platformdirs, "user_config_dir", lambda *a, **k: str(tmp_path / "config"))
    monkeypatch.setattr(paths.platformdirs, "user_log_dir", lambda *a, **k: str(tmp_path / "log"))
    assert paths.database_path() == tmp_path / "data" / paths.DATABASE_NAME
    assert paths.settings_path() == tmp_path / "config" / paths.SETTINGS_NAME
    assert paths.log_dir() == tmp_path / "log"
    assert paths.models_dir() == tmp_path / "data" / "models"


def test_defaults_without_a_file():
    settings = load_settings()
    assert settings == Settings()
    assert settings.preset == "quality" and settings.matching_preset() == "quality"


def test_round_trip_keeps_every_field():
    changed = Settings(
        system_prompt="Be brief.\nÜnïcode ok",
        max_new_tokens=256,
        seed=7,
        theme="dark",
        reduced_motion=True,
        replay_speed=2.5,
        model="/models/dg",
        device="cuda",
        quantization="nf4",
    ).with_preset("fast")
    save_settings(changed)
    assert load_settings() == changed
    assert not [p for p in paths.config_dir().iterdir() if p.name != paths.SETTINGS_NAME], "temp file left"


def test_presets_map_to_sampling_values():
    quality = Settings().with_preset("quality")
    fast = Settings().with_preset("fast")
    assert (quality.max_denoising_steps, quality.entropy_bound, quality.t_min, quality.t_max) == (48, 0.1, 0.4, 0.8)
    assert fast.max_denoising_steps < quality.max_denoising_steps
    assert fast.entropy_bound > quality.entropy_bound
    for name, preset in PRESETS.items():
        settings = Settings().with_preset(name)
        assert settings.matching_preset() == name
        assert settings.generation_settings().problems() == []
        assert settings.generation_settings().max_denoising_steps == preset.max_denoising_steps


def test_editing_a_raw_value_makes_the_preset_custom():
    edited = Settings().with_preset("balanced").with_sampling(max_denoising_steps=30)
    assert edited.preset == "custom"
    assert edited.generation_settings().max_denoising_steps == 30
    back = edited.with_sampling(max_denoising_steps=PRESETS["balanced"].max_denoising_steps)
    assert back.preset == "balanced"


def test_version_1_file_is_migrated():
    old = {"schema_version": 1, "dark_mode": True, "steps": 20, "reply_tokens": 300, "system_prompt": "hi"}
    paths.settings_path().write_text(json.dumps(old), encoding="utf-8")
    settings = load_settings()
    assert settings.schema_version == SCHEMA_VERSION
    assert (settings.theme, settings.max_denoising_steps, settings.max_new_tokens) == ("dark", 20, 300)
    assert settings.system_prompt == "hi"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"schema_version": "x"}', "\x00\x01"])
def test_corrupt_file_gives_defaults_and_a_backup(caplog, content):
    path = paths.settings_path()
    path.write_text(content, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="canvas_chat.settings"):
        settings = load_settings()
    assert settings == Settings()
    assert path.with_name(path.name + ".bak").read_text(encoding="utf-8") == content
    assert not path.exists()
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    save_settings(settings)  # and the app can save again
    assert load_settings() == settings


def test_bad_field_values_fall_back_one_by_one(caplog):
    data = dataclasses.asdict(Settings(system_prompt="keep me"))
    data.update(theme="purple", max_denoising_steps=-3, seed=True, t_min=0.9, t_max=0.2, unknown_field=1)
    with caplog.at_level(logging.WARNING, logger="canvas_chat.settings"):
        settings = settings_from_dict(data)
    assert settings.system_prompt == "keep me"
    assert (settings.theme, settings.max_denoising_steps, settings.seed) == ("system", 48, None)
    assert (settings.t_min, settings.t_max) == (Settings.t_min, Settings.t_max)


def test_newer_schema_keeps_known_fields(caplog):
    data = dataclasses.asdict(Settings(theme="light"))
    data["schema_version"] = SCHEMA_VERSION + 5
    with caplog.at_level(logging.WARNING, logger="canvas_chat.settings"):
        assert settings_from_dict(data).theme == "light"


def test_the_core_modules_work_without_qt():
    """chat, store, export, settings, replay and paths stay Qt-free (usable from scripts and workers)."""
    import subprocess

    from tests.conftest import PYTHON, python_env

    script = (
        "import sys\n"
        "import app.chat.messages, engine.paths, app.chat.replay, app.settings, app.chat.store, app.chat.export\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'torch'))))\n"
    )
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=python_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
