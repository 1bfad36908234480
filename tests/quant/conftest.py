"""Fixtures of the quantization tests: the unquantized tiny model and prompts over its vocabulary."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_reference(tiny_model_dir):
    from transformers import DiffusionGemmaForBlockDiffusion

    return DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir)).eval()


def prompts(vocab_size: int, count: int = 5, seed: int = 0, prompt_tokens: int = 48, canvas: int = 16):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(3, vocab_size, (1, prompt_tokens), generator=generator),
         torch.randint(3, vocab_size, (1, canvas), generator=generator))
        for _ in range(count)
    ]


def logits(model, input_ids, canvas):
    import torch

    with torch.no_grad():
        return model(input_ids=input_ids, decoder_input_ids=canvas).logits
