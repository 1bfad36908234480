"""Diffusion cost: ms per decoder forward, ms per encoder forward, tokens/s at fixed denoising steps.

Every figure comes from stock `generate()` with adaptive stopping switched off, so a model with
random weights does exactly the work a real one would do at the same number of steps per canvas.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.timing import figure, synchronize

# Far below any reachable mean entropy: StableAndConfidentStoppingCriteria never fires.
NEVER_CONFIDENT = 1e-30


def fixed_steps_kwargs(model: Any, steps: int, max_new_tokens: int) -> dict[str, Any]:
    """generate() arguments that run exactly `steps` decoder forwards on every canvas."""
    vocab_size = model.config.text_config.vocab_size
    return dict(
        max_new_tokens=max_new_tokens,
        max_denoising_steps=steps,
        stability_threshold=1,
        confidence_threshold=NEVER_CONFIDENT,
        # An id outside the vocabulary is never sampled: no canvas ends the reply early.
        eos_token_id=[vocab_size],
        return_dict_in_generate=False,
    )


def random_prompt(model: Any, length: int, device: str, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    vocab_size = model.config.get_text_config().vocab_size
    # Skip the special ids at the bottom of the vocabulary (pad, eos, bos, image markers).
    return torch.randint(10, vocab_size, (1, length), generator=generator).to(device)


@dataclass
class ForwardClock:
    """Wall time of every decoder and encoder forward that generate() makes."""

    decoder_s: list[float] = field(default_factory=list)
    encoder_s: list[float] = field(default_factory=list)


@contextlib.contextmanager
def clocked_forwards(model: Any, device: str) -> Iterator[ForwardClock]:
    """Times each forward by shadowing the bound methods that generate() looks up on the instance.

    generate() takes `decoder_forward = self.forward` and calls `self.model.encoder(...)`, so an
    instance attribute named `forward` on each is what runs. Synchronising around each forward
    costs nothing extra: generate() already waits on the GPU every step (`torch.all(...)`).
    """
    clock = ForwardClock()
    encoder = model.model.encoder

    def timed(function, samples):
        def wrapper(*args, **kwargs):
            synchronize(device)
            start = time.perf_counter()
            out = function(*args, **kwargs)
            synchronize(device)
            samples.append(time.perf_counter() - start)
            return out

        return wrapper

    model.forward = timed(type(model).forward.__get__(model), clock.decoder_s)
    encoder.forward = timed(type(encoder).forward.__get__(encoder), clock.encoder_s)
    try:
        yield clock
    finally:
        del model.forward
        del encoder.forward


def _generate(model: Any, prompt, steps: int, max_new_tokens: int, seed: int):
    import torch

    torch.manual_seed(seed)
    return model.generate(prompt, **fixed_steps_kwargs(model, steps, max_new_tokens))


@contextlib.contextmanager
def canvas_of(model: Any, canvas_length: int) -> Iterator[None]:
    """generate() reads the canvas length from the config; the weights do not depend on it."""
    saved = model.config.canvas_length
    model.config.canvas_length = canvas_length
    try:
        yield
    finally:
        model.config.canvas_length = saved


def decoder_forward_ms(
    model: Any, device: str, *, canvas_length: int, prompt_tokens: int, steps: int, runs: int, warmup: int = 1
) -> dict[str, Any]:
    """ms per decoder forward over a canvas of `canvas_length` after a `prompt_tokens` prompt."""
    prompt = random_prompt(model, prompt_tokens, device)
    samples: list[float] = []
    with canvas_of(model, canvas_length):
        for index in range(warmup + runs):
            with clocked_forwards(model, device) as clock:
                _generate(model, prompt, steps, canvas_length, seed=index)
            if index >= warmup:
                samples.extend(s * 1000 for s in clock.decoder_s)
    return figure(samples, "ms", canvas_length=canvas_length, prompt_tokens=prompt_tokens)


def encoder_forward_ms(
    model: Any, device: str, *, prompt_tokens: int, runs: int, warmup: int = 1
) -> dict[str, Any]:
    """ms for the encoder to fill the KV cache with a `prompt_tokens` prompt (the prefill)."""
    prompt = random_prompt(model, prompt_tokens, device)
    canvas_length = model.config.canvas_length
    samples: list[float] = []
    for index in range(warmup + runs):
        with clocked_forwards(model, device) as clock:
            _generate(model, prompt, 1, canvas_length, seed=index)
        if index >= warmup:
            samples.append(clock.encoder_s[0] * 1000)
    return figure(samples, "ms", prompt_tokens=prompt_tokens)


def tokens_per_second(
    model: Any, device: str, *, steps: int, prompt_tokens: int, canvases: int, runs: int, warmup: int = 1
) -> dict[str, Any]:
    """End-to-end tokens/s of generate() (prefill included) at exactly `steps` steps per canvas."""
    prompt = random_prompt(model, prompt_tokens, device)
    new_tokens = canvases * model.config.canvas_length
    samples: list[float] = []
    for index in range(warmup + runs):
        synchronize(device)
        start = time.perf_counter()
        out = _generate(model, prompt, steps, new_tokens, seed=index)
        synchronize(device)
        elapsed = time.perf_counter() - start
        produced = out.shape[1] - prompt.shape[1]
        if produced != new_tokens:
            raise RuntimeError(f"generate() made {produced} tokens, expected {new_tokens}: stopping was not off")
        if index >= warmup:
            samples.append(new_tokens / elapsed)
    return figure(
        samples,
        "tokens/s",
        steps_per_canvas=steps,
        tokens_per_forward=model.config.canvas_length / steps,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
    )
