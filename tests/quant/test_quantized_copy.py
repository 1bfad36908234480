"""The quantized copy: reused with identical logits; partial, stale, truncated or edited copies rebuilt."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from engine.quantized_copy import MANIFEST_NAME, copy_folder_for, load_quantized
from tests.quant.conftest import logits, prompts


@pytest.fixture
def source(tiny_model_dir, tmp_path):
    """A private copy of the tiny model folder (the stale test edits it)."""
    folder = tmp_path / "tiny-diffusiongemma"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def _load(source, copies, events=None):
    return load_quantized(source, quantization="nf4", device="cpu", copies_dir=copies,
                          progress=(events.append if events is not None else None))


def _weights_file(copy_dir):
    return next(copy_dir.glob("model-*.safetensors"))


def test_copy_round_trips_to_identical_logits(source, tmp_path):
    copies = tmp_path / "models"
    built = _load(source, copies)
    copy_dir = copy_folder_for(source, copies, "nf4", False)
    manifest = json.loads((copy_dir / MANIFEST_NAME).read_text())
    assert manifest["quantization"]["double_quant"] is False and manifest["vision"] is False
    assert manifest["source"]["folder"] == str(source.resolve())
    assert all(len(info["sha256"]) == 64 for info in manifest["files"].values())
    assert (copy_dir / "tokenizer.json").is_file() and (copy_dir / "config.json").is_file()
    events = []
    reloaded = _load(source, copies, events)
    assert any("quantized copy" in e["message"] for e in events)
    assert not any(e.get("stage") == "quantizing" for e in events), "a valid copy must not be re-quantized"
    for input_ids, canvas in prompts(built.config.text_config.vocab_size, count=2):
        assert torch.equal(logits(built, input_ids, canvas), logits(reloaded, input_ids, canvas))


def _damage_and_reload(source, tmp_path, damage, caplog):
    copies = tmp_path / "models"
    original = _load(source, copies)
    copy_dir = copy_folder_for(source, copies, "nf4", False)
    damage(copy_dir)
    events = []
    with caplog.at_level(logging.WARNING, logger="canvas_chat.engine.quantized_copy"):
        rebuilt = _load(source, copies, events)
    messages = [e["message"] for e in events if "cannot be used" in e["message"]]
    assert len(messages) == 1, [e["message"] for e in events]
    assert any("cannot be used" in r.getMessage() for r in caplog.records)
    # rebuilt from the source: same weights as the first build, and a valid copy again
    input_ids, canvas = prompts(original.config.text_config.vocab_size, count=1)[0]
    assert torch.equal(logits(original, input_ids, canvas), logits(rebuilt, input_ids, canvas))
    json.loads((copy_dir / MANIFEST_NAME).read_text())
    events = []
    _load(source, copies, events)
    assert not any("cannot be used" in e["message"] for e in events)
    return messages[0]


def test_truncated_copy_is_rejected_and_rebuilt(source, tmp_path, caplog):
    def truncate(copy_dir):
        path = _weights_file(copy_dir)
        path.write_bytes(path.read_bytes()[:-4096])

    message = _damage_and_reload(source, tmp_path, truncate, caplog)
    assert "truncated" in message


def test_edited_copy_is_rejected_and_rebuilt(source, tmp_path, caplog):
    def flip_a_byte(copy_dir):
        path = _weights_file(copy_dir)
        data = bytearray(path.read_bytes())
        data[len(data) * 2 // 3] ^= 0x5A
        path.write_bytes(bytes(data))

    message = _damage_and_reload(source, tmp_path, flip_a_byte, caplog)
    assert "SHA-256" in message and "corrupted" in message


def test_partial_copy_without_manifest_is_rebuilt(source, tmp_path, caplog):
    message = _damage_and_reload(source, tmp_path, lambda copy_dir: (copy_dir / MANIFEST_NAME).unlink(), caplog)
    assert "no manifest" in message


def test_stale_copy_is_rebuilt_when_the_source_changes(source, tmp_path, caplog):
    def change_source(_copy_dir):
        import os

        weights = source / "model.safetensors"
        stat = weights.stat()
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    message = _damage_and_reload(source, tmp_path, change_source, caplog)
    assert "stale" in message


def test_other_settings_get_their_own_copy(source, tmp_path):
    copies = tmp_path / "models"
    _load(source, copies)
    load_quantized(source, quantization="nf4-double", device="cpu", copies_dir=copies)
    names = sorted(p.name for p in copies.iterdir())
    assert names == ["tiny-diffusiongemma-nf4", "tiny-diffusiongemma-nf4-double"]
