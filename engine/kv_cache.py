"""A KV cache preallocated per conversation: writes land in place, and a denoising step reads the
cache and its canvas through views instead of concatenating the whole context every step.

Same keys, values, order and masks as transformers' `DynamicCache` (a conversation's replies are
token for token the same): full-attention layers keep every token, sliding-window layers the last
`window - 1`, as `DynamicSlidingWindowLayer` does. transformers' `StaticCache` does not fit: its
sliding layers keep `window` tokens, and DiffusionGemma's decoder, given a compileable cache,
writes the canvas at the layer's tensor `cumulative_length`, which a static sliding layer stops
advancing once it is full, so the canvas overwrote cached context once a conversation passed the
window (the divergence bench/README.md recorded).
"""

from __future__ import annotations

import types

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

# The fewest tokens a buffer is made for; a full-attention buffer that runs out doubles (one copy
# of the context, once per doubling, never per step).
MIN_CAPACITY = 256


class _Buffers:
    """K and V of one layer, [batch, heads, capacity, head_dim], allocated on first write."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def reserve(self, like: torch.Tensor, capacity: int, keep: tuple[int, int]) -> None:
        """At least `capacity` tokens of room, keeping tokens [start, stop) of the old buffer at its front."""
        if capacity <= self.capacity:
            return
        shape = (*like.shape[:-2], capacity, like.shape[-1])
        keys, values = like.new_empty(shape), like.new_empty(shape)
        start, stop = keep
        if self.keys is not None and stop > start:
            keys.narrow(-2, 0, stop - start).copy_(self.keys.narrow(-2, start, stop - start))
            values.narrow(-2, 0, stop - start).copy_(self.values.narrow(-2, start, stop - start))
        self.keys, self.values = keys, values

    def write(self, at: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        length = key_states.shape[-2]
        self.keys.narrow(-2, at, length).copy_(key_states)
        self.values.narrow(-2, at, length).copy_(value_states)

    def view(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        # narrow, not indexing: the same view, and what the fake-CUDA step test can run on a CPU-only torch
        return self.keys.narrow(-2, start, stop - start), self.values.narrow(-2, start, stop - start)


class PreallocatedLayer(DynamicLayer):
    """A full-attention layer: tokens [0, length) of one growing-by-doubling buffer."""

    def __init__(self, capacity_hint: int = MIN_CAPACITY) -> None:
        super().__init__()
        self.buffers = _Buffers()
        self.length = 0
        self.capacity_hint = max(capacity_hint, MIN_CAPACITY)

    def _room(self, like: torch.Tensor, tokens: int) -> None:
        if self.length + tokens > self.buffers.capacity:
            wanted = max(self.length + tokens, self.capacity_hint, 2 * self.buffers.capacity)
            self.buffers.reserve(like, wanted, (0, self.length))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
        self._room(key_states, key_states.shape[-2])
        self.buffers.write(self.length, key_states, value_states)
        self.length += key_states.shape[-2]
        self.keys, self.values = self.buffers.view(0, self.length)
        return self.keys, self.values

    def read_with(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """The cache followed by `key_states` (the decoder's canvas), without keeping the canvas."""
        self._room(key_states, key_states.shape[-2])
        self.buffers.write(self.length, key_states, value_states)
        return self.buffers.view(0, self.length + key_states.shape[-2])

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self.length = self.keys.shape[-2] if self.is_initialized else 0


class PreallocatedSlidingLayer(DynamicSlidingWindowLayer):
    """A sliding-window layer: the last `window - 1` tokens, at [start, start + length) of a buffer
    with room for them, a few canvases, and a second window, so that moving the kept tokens back to
    the front (at most `window - 1` of them) happens once every few canvases."""

    def __init__(self, sliding_window: int, chunk_hint: int = MIN_CAPACITY) -> None:
        super().__init__(sliding_window=sliding_window)
        self.buffers = _Buffers()
        self.start = 0
        self.length = 0
        self.capacity = 2 * (sliding_window - 1) + 2 * max(chunk_hint, 1)

    def _room(self, like: torch.Tensor, tokens: int) -> bool:
        """Room after the kept tokens for `tokens` more; False where one write is larger than the buffer."""
        if self.length + tokens > self.capacity:
            return False
        if self.buffers.keys is None:
            self.buffers.reserve(like, self.capacity, (0, 0))
        elif self.start + self.length + tokens > self.capacity:
            # Move the kept tokens to the front (through a copy: the ranges may overlap).
            keys, values = (t.clone() for t in self.buffers.view(self.start, self.start + self.length))
            self.buffers.write(0, keys, values)
            self.start = 0
        return True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
            self._sliding_window_tensor = self._sliding_window_tensor.to(self.device)
        tokens = key_states.shape[-2]
        self.cumulative_length += tokens
        if self._room(key_states, tokens):
            self.buffers.write(self.start + self.length, key_states, value_states)
            full_keys, full_values = self.buffers.view(self.start, self.start + self.length + tokens)
            total = self.length + tokens
            self.length = min(self.sliding_window - 1, total)
            self.start += total - self.length
        else:  # a prompt longer than the buffer, encoded at once: what DynamicSlidingWindowLayer does
            kept_keys, kept_values = self.buffers.view(self.start, self.start + self.length) if self.length else (
                key_states.narrow(-2, 0, 0), value_states.narrow(-2, 0, 0))
            full_keys = torch.cat([kept_keys, key_states], dim=-2)
            full_values = torch.cat([kept_values, value_states], dim=-2)
            self.length = min(self.sliding_window - 1, full_keys.shape[-2])
            self.buffers.reserve(key_states, self.capacity, (0, 0))
            first = full_keys.shape[-2] - self.length
            self.buffers.write(0, full_keys.narrow(-2, first, self.length), full_values.narrow(-2, first, self.length))
            self.start = 0
        # Views of the kept tokens (what DynamicSlidingWindowLayer holds), for the cache's readers.
        self.keys, self.values = self.buffers.view(self.start, self.start + self.length)
        return full_keys, full_values

    def read_with(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """The kept tokens followed by `key_states` (the decoder's canvas), without keeping the canvas."""
        tokens = key_states.shape[-2]
        if not self._room(key_states, tokens):
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)
        self.buffers.write(self.start + self.length, key_states, value_states)
        self.keys, self.values = self.buffers.view(self.start, self.start + self.length)
        return self.buffers.view(self.start, self.start + self.length + tokens)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a sliding-window layer cannot be cropped (as in DynamicSlidingWindowLayer)")


def preallocated_cache(model, canvas_length: int, context_hint: int) -> DynamicCache:
    """A `DynamicCache` whose layers write into preallocated buffers (see the module docstring).

    `context_hint`: the tokens the conversation is expected to reach (its prompt and reply budget);
    full-attention buffers start that large and double if a conversation outgrows them.
    """
    config = model.config.get_text_config(decoder=True)
    cache = DynamicCache(config=config)
    for index, layer in enumerate(cache.layers):
        if isinstance(layer, DynamicSlidingWindowLayer):
            cache.layers[index] = PreallocatedSlidingLayer(layer.sliding_window, chunk_hint=canvas_length)
        else:
            cache.layers[index] = PreallocatedLayer(capacity_hint=context_hint)
    read_canvas_through_views(model)
    return cache


def read_canvas_through_views(model) -> None:
    """Routes the decoder's cache reads through `read_with` where the cache is preallocated; any
    other cache keeps transformers' own `append_to_cache` (a concatenation)."""
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaDecoderTextAttention

    for module in model.modules():
        if isinstance(module, DiffusionGemmaDecoderTextAttention) and "append_to_cache" not in module.__dict__:
            module.append_to_cache = types.MethodType(_append_to_cache, module)


def _append_to_cache(self, past_key_values, key_states: torch.Tensor, value_states: torch.Tensor):
    layer = past_key_values.layers[self.layer_idx]
    if isinstance(layer, (PreallocatedLayer, PreallocatedSlidingLayer)):
        return layer.read_with(key_states, value_states)
    return type(self).append_to_cache(self, past_key_values, key_states, value_states)
