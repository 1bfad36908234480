"""'Use a local folder': every broken-folder case gets its own clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.model_folder import INDEX_NAME, check_model_folder


@pytest.fixture
def folder(tiny_model_dir, tmp_path) -> Path:
    """A writable copy of the tiny model (one model.safetensors)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "my-model"))


@pytest.fixture
def sharded(folder) -> Path:
    """The tiny model split into two shards with an index, like the real checkpoint."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for number, part in enumerate((names[:half], names[half:]), start=1):
        shard = f"model-0000{number}-of-00002.safetensors"
        save_file({name: tensors[name] for name in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({name: shard for name in part})
    (folder / "model.safetensors").unlink()
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def test_a_good_folder_is_accepted(folder):
    check = check_model_folder(folder)
    assert check.ok and check.code == "ok"
    assert check.weight_files == ["model.safetensors"]
    assert check.message.startswith("DiffusionGemma model with 1 weight file (")
    assert check.tensors > 10


def test_a_good_sharded_folder_is_accepted(sharded):
    check = check_model_folder(sharded)
    assert check.ok, check.message
    assert check.weight_files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def _fails(folder, code: str, starts: str) -> str:
    check = check_model_folder(folder)
    assert not check.ok
    assert check.code == code, check.message
    assert check.message.startswith(starts), check.message
    return check.message


def test_missing_folder(tmp_path):
    _fails(tmp_path / "nothing-here", "model_not_found", "The folder ")
    (tmp_path / "a-file").write_text("x")
    _fails(tmp_path / "a-file", "model_not_found", f"{tmp_path / 'a-file'} is a file")


def test_config_missing(folder):
    (folder / "config.json").unlink()
    _fails(folder, "model_broken", "my-model has no config.json, so it is not a model folder.")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", b"\xff\xfe\x00garbage"])
def test_config_unreadable(folder, content):
    path = folder / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    _fails(folder, "model_broken", "config.json in my-model ")


def test_wrong_model_type(folder):
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gemma3"
    (folder / "config.json").write_text(json.dumps(config))
    message = _fails(folder, "wrong_model_type", "my-model is a gemma3 model")
    assert "DiffusionGemma models (diffusion_gemma) only" in message


def test_a_shard_listed_in_the_index_is_missing(sharded):
    (sharded / "model-00002-of-00002.safetensors").unlink()
    message = _fails(sharded, "model_broken", "1 of the 2 weight files listed in model.safetensors.index.json are missing")
    assert "model-00002-of-00002.safetensors" in message and "incomplete" in message


def test_index_unreadable(sharded):
    (sharded / INDEX_NAME).write_text('{"metadata": {}}')
    _fails(sharded, "model_broken", "model.safetensors.index.json in my-model cannot be read")


def test_no_weights(folder):
    (folder / "model.safetensors").unlink()
    _fails(folder, "model_broken", "my-model has no weights")


def test_safetensors_header_unreadable(folder):
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    _fails(folder, "model_broken", "The header of model.safetensors is unreadable")
    (folder / "model.safetensors").write_bytes((20).to_bytes(8, "little") + b"{broken json here!!}")
    _fails(folder, "model_broken", "The header of model.safetensors is unreadable")


def test_a_shard_cut_short(sharded):
    shard = sharded / "model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    _fails(sharded, "model_broken", "model-00001-of-00002.safetensors is cut short")


def test_tokenizer_missing(folder):
    (folder / "tokenizer.json").unlink()
    _fails(folder, "tokenizer_missing", "my-model has no tokenizer (tokenizer.json is missing).")


def test_chat_template_missing(folder):
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    _fails(folder, "tokenizer_missing", "The tokenizer in my-model has no chat template")


def test_the_downloaded_snapshot_layout_is_accepted(folder, tmp_path):
    """A Hugging Face cache snapshot (files are symlinks into blobs/) is a valid folder too."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    snapshot = tmp_path / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        blob = blobs / path.name
        shutil.copy(path, blob)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", path.name))
    assert check_model_folder(snapshot).ok
