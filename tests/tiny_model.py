"""Factory for tiny DiffusionGemma model folders: random weights, a real small tokenizer.

Every folder it writes loads through the Auto classes exactly like the real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from engine.demo.tokenizer import (
    BOS_ID,
    END_OF_TURN_ID,
    EOS_ID,
    PAD_ID,
    build_tokenizer,
)


def tiny_config(vocab_size: int, canvas_length: int = 16, hidden_size: int = 64, num_layers: int = 2):
    from engine.demo.train import small_diffusion_gemma_config

    return small_diffusion_gemma_config(
        vocab_size,
        hidden_size=hidden_size,
        layer_types=["sliding_attention"] * (num_layers - 1) + ["full_attention"],
        head_dim=16,
        global_head_dim=32,
        sliding_window=64,
        canvas_length=canvas_length,
    )


def build_tiny_model_folder(
    folder: Path,
    *,
    seed: int = 0,
    canvas_length: int = 16,
    max_denoising_steps: int = 8,
    vocab_size: int = 512,
) -> Path:
    """Writes config, random weights, generation config and tokenizer into `folder`."""
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig,
        EntropyBoundSamplerConfig,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size=vocab_size)
    config = tiny_config(vocab_size=len(tokenizer), canvas_length=canvas_length)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(config)
    model.generation_config = DiffusionGemmaGenerationConfig(
        max_new_tokens=canvas_length,
        max_denoising_steps=max_denoising_steps,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.1),
        t_min=0.4,
        t_max=0.8,
        stability_threshold=1,
        confidence_threshold=0.005,
        eos_token_id=[EOS_ID, END_OF_TURN_ID],
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
    )
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def build_tiny_vision_model_folder(folder: Path, *, seed: int = 0, canvas_length: int = 16) -> Path:
    """A tiny model whose vision tower takes images: 70 soft tokens an image (the smallest budget
    Gemma 4's image processor allows) instead of the real checkpoint's 280."""
    import json

    folder = build_tiny_model_folder(folder, seed=seed, canvas_length=canvas_length)
    config_path = Path(folder) / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["vision_soft_tokens_per_image"] = 70
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def write_test_image(path: Path, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 80, 40)) -> Path:
    """A small real image (format from the suffix: .png, .jpg, .webp) with a gradient in it."""
    from PIL import Image

    image = Image.new("RGB", size, color)
    for x in range(size[0]):
        image.putpixel((x, x * size[1] // size[0]), (20, 20, 220))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
