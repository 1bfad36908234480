"""The real checkpoint's shipped config, and the streaming loader on a scaled-down checkpoint that
carries exactly the real tensor names (tests/quant/real_model_tensors.json)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from engine.real_config import REAL_MODEL_ID, load_config_dict, scaled_config_dict, shipped_model_dir

# Size and SHA-256 of the published files (google/diffusiongemma-26B-A4B-it).
PUBLISHED = {
    "config.json": (3469, "13b11d2fe87302cc2332c64eb9eb4ac305d9b8a123ffe9c5cb5b1920fc70c506"),
    "generation_config.json": (357, "99334f763c3dbe8b161aeaca1c150a05344299fda2d2e4a0e1d342c744461200"),
}
TENSOR_LIST = Path(__file__).with_name("real_model_tensors.json")
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_COPIES = [REPO_ROOT.parent / "shared" / "real-model", Path("/work/shared/real-model")]


def shared_copy() -> Path | None:
    return next((folder for folder in SHARED_COPIES if (folder / "config.json").is_file()), None)


def real_tensors() -> dict[str, list[int]]:
    return json.loads(TENSOR_LIST.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_config_files_are_the_published_bytes(name):
    data = (shipped_model_dir(REAL_MODEL_ID) / name).read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_config_files_equal_the_shared_copy(name):
    folder = shared_copy()
    if folder is None:
        pytest.skip("no shared copy of the real model's files (../shared/real-model) on this machine")
    assert (shipped_model_dir(REAL_MODEL_ID) / name).read_bytes() == (folder / name).read_bytes()


def test_committed_tensor_list_equals_the_shared_one():
    folder = shared_copy()
    if folder is None:
        pytest.skip("no shared copy of the real model's files (../shared/real-model) on this machine")
    shared = json.loads((folder / "tensors.json").read_text(encoding="utf-8"))
    assert {name: info["shape"] for name, info in shared.items()} == real_tensors()


def test_the_shipped_config_builds_every_checkpoint_tensor_at_its_shape():
    import torch
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    config = DiffusionGemmaConfig.from_dict(load_config_dict(REAL_MODEL_ID))
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    built = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    assert {name: built.get(name) for name in real_tensors()} == real_tensors()


# ---------------------------------------------------------------------------- scaled-down checkpoint


def scaled_config():
    from transformers import DiffusionGemmaConfig

    return DiffusionGemmaConfig.from_dict(
        scaled_config_dict(load_config_dict(REAL_MODEL_ID), num_experts=4, top_k_experts=2, vocab_size=512, canvas_length=16)
    )


def write_checkpoint(folder: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    scaled_config().to_json_file(str(folder / "config.json"))
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def scaled_weights():
    """Random weights of the scaled model under exactly the real checkpoint's names, in bf16."""
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.manual_seed(0)
    state = DiffusionGemmaForBlockDiffusion(scaled_config()).state_dict()
    return {name: state[name].to(torch.bfloat16).clone() for name in real_tensors()}


@pytest.fixture(scope="module")
def scaled_checkpoint(tmp_path_factory, scaled_weights):
    return write_checkpoint(tmp_path_factory.mktemp("scaled-real") / "model", scaled_weights)


def test_scaled_checkpoint_has_exactly_the_real_names(scaled_checkpoint):
    from engine.streaming_loader import checkpoint_entries

    assert sorted(entry.name for entry in checkpoint_entries(scaled_checkpoint)) == sorted(real_tensors())


@pytest.mark.parametrize("vision", [False, True])
def test_streaming_loader_takes_every_real_tensor_name(scaled_checkpoint, scaled_weights, vision, caplog):
    import torch

    from engine.streaming_loader import load_model_streaming

    caplog.set_level(logging.WARNING, logger="canvas_chat.engine.streaming_loader")
    model = load_model_streaming(scaled_checkpoint, quantization="nf4", device="cpu", vision=vision,
                                 dtype=torch.float32)
    assert not [r.message for r in caplog.records if "ignoring" in r.message]
    loaded = dict(model.named_parameters(remove_duplicate=False))
    # Unquantized weights arrive as stored, under the decoder name and every tied encoder alias.
    for name in ("model.decoder.embed_tokens.weight", "model.decoder.layers.5.router.proj.weight",
                 "model.decoder.layers.29.self_attn.k_norm.weight"):
        assert torch.equal(loaded[name], scaled_weights[name].float())
    assert torch.equal(loaded["model.encoder.language_model.layers.5.router.proj.weight"],
                       scaled_weights["model.decoder.layers.5.router.proj.weight"].float())
    assert (model.model.encoder.vision_tower is not None) == vision
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[2, 10, 11]]), decoder_input_ids=torch.arange(3, 19).unsqueeze(0)).logits
    assert logits.shape == (1, 16, 512) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "name",
    [
        "model.decoder.layers.3.post_attention_layernorm.weight",  # would broadcast silently
        "model.decoder.layers.5.self_attn.k_proj.weight",  # a text linear: quantized on arrival
        "model.decoder.layers.7.experts.gate_up_proj",  # experts: quantized in chunks
    ],
)
def test_a_same_named_tensor_of_another_shape_is_refused_by_name(tmp_path, scaled_weights, name):
    import torch

    from engine.errors import EngineError
    from engine.streaming_loader import load_model_streaming

    weights = dict(scaled_weights)
    expected = list(weights[name].shape)
    found = expected[:-1] + [expected[-1] * 2]
    weights[name] = torch.zeros(found, dtype=torch.bfloat16)
    folder = write_checkpoint(tmp_path / "model", weights)
    with pytest.raises(EngineError) as raised:
        load_model_streaming(folder, quantization="nf4", device="cpu", dtype=torch.float32)
    assert raised.value.code == "model_broken"
    message = str(raised.value)
    assert name in message and str(found) in message and str(expected) in message
