"""The autoregressive baseline: Gemma 4's text model with DiffusionGemma's backbone, one token at a time."""

from __future__ import annotations

import time
from typing import Any

from bench.diffusion import random_prompt
from bench.timing import figure, synchronize


def _greedy(model: Any, prompt, new_tokens: int):
    vocab_size = model.config.vocab_size
    return model.generate(
        prompt,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        # Never stop early: an id outside the vocabulary is never produced.
        eos_token_id=vocab_size,
        pad_token_id=0,
    )


def ms_per_token(
    model: Any, device: str, *, prompt_tokens: int, new_tokens: int, runs: int, warmup: int = 1
) -> dict[str, Any]:
    """ms per generated token at batch 1 with a KV cache, prefill excluded.

    Each run times a one-token generate (prefill + first token) and a (1 + new_tokens) one on the
    same prompt; the difference over `new_tokens` is the steady decode cost per token, with
    generate()'s own per-token work (logits processing, stopping checks) included.
    """
    prompt = random_prompt(model, prompt_tokens, device)
    samples: list[float] = []
    for index in range(warmup + runs):
        short = _timed(lambda: _greedy(model, prompt, 1), device)
        long = _timed(lambda: _greedy(model, prompt, 1 + new_tokens), device)
        if index >= warmup:
            samples.append(max(long - short, 1e-9) / new_tokens * 1000)
    return figure(samples, "ms", prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch_size=1)


def _timed(function, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start
