"""Runs DiffusionGemma's own `generate()` and reports every denoising step as it happens.

The denoising loop is transformers' unchanged; two hooks observe it: a sampler subclass that
keeps each step's per-token entropy and accepted mask, and a streamer that turns each draft
into a `StepReport`. Neither consumes random numbers, so a seeded run gives exactly the tokens
of stock `generate()`.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    EntropyBoundSampler,
    EntropyBoundSamplerConfig,
)

from engine import test_switches
from engine.errors import EngineError, GenerationCancelled
from engine.protocol import ENTROPY_BUCKETS, GenerationSettings, GenerationStats

log = logging.getLogger("canvas_chat.engine.generation")

# Upper edges (nats) of the entropy buckets shown in the GUI: confident, fairly sure, unsure.
ENTROPY_BUCKET_EDGES = (0.05, 0.5, 2.0)
assert len(ENTROPY_BUCKET_EDGES) == ENTROPY_BUCKETS - 1


class ProbingSampler(EntropyBoundSampler):
    """transformers' entropy-bound sampler, keeping the last step's per-token entropy."""

    last_token_entropy: torch.Tensor | None = None

    def accept_canvas(self, current_canvas, denoiser_canvas, logits, cur_step):
        # Same computation as EntropyBoundSampler.accept_canvas (transformers 5.23); the
        # entropy is computed there anyway, so keeping it costs nothing extra.
        token_entropy = torch.distributions.Categorical(logits=logits).entropy()
        sorted_token_entropy, sorted_indices = torch.sort(token_entropy, dim=-1, descending=False)
        cumulative_entropy = torch.cumsum(sorted_token_entropy, dim=-1)
        sorted_selection_mask = cumulative_entropy - sorted_token_entropy <= self.entropy_bound
        self.accepted_token_mask = torch.scatter(
            input=torch.zeros_like(sorted_selection_mask), dim=-1, index=sorted_indices, src=sorted_selection_mask
        )
        self.last_token_entropy = token_entropy
        return torch.where(self.accepted_token_mask, denoiser_canvas, current_canvas)


def _prepare_probing_sampler(self, generation_config):
    sampler = ProbingSampler(
        config=generation_config.sampler_config,
        canvas_length=self.config.canvas_length,
        vocab_size=self.config.text_config.vocab_size,
        max_denoising_steps=generation_config.max_denoising_steps,
    )
    self._canvas_chat_sampler = sampler
    return sampler


def attach_probe(model) -> None:
    """Makes `model.generate()` use the probing sampler (per instance; idempotent)."""
    model._prepare_sampler = types.MethodType(_prepare_probing_sampler, model)


@dataclass
class StepReport:
    canvas_index: int
    step_index: int
    max_steps: int
    token_ids: list[int]  # argmax canvas up to (not including) the first EOS
    settled: list[bool]
    entropy_buckets: list[int]


@dataclass
class CanvasReport:
    canvas_index: int
    token_ids: list[int]  # this canvas's tokens up to (not including) the first EOS
    steps: int
    reached_eos: bool


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated ids: no prompt, no pad (the EOS is included when reached)
    finish_reason: str
    stats: GenerationStats
    past_key_values: Any = None
    prompt_ids: list[int] = field(default_factory=list)
    # The cache as it was after encoding the first `keep_prefix` prompt tokens (run_generation's
    # argument), untouched by the reply: what a conversation's next turn can start from.
    prefix_cache: Any = None


class StepObserver:
    """Receives the reports of one generation; every method is optional."""

    def on_step(self, report: StepReport) -> None: ...

    def on_canvas(self, report: CanvasReport) -> None: ...


class _DenoisingStreamer(BaseStreamer):
    """Bridges transformers' streamer calls to StepReports, and raises to cancel."""

    def __init__(
        self,
        model,
        eos_ids: set[int],
        max_steps: int,
        observer: StepObserver,
        should_stop: Callable[[], bool],
    ):
        self.model = model
        self.eos_ids = eos_ids
        self.max_steps = max_steps
        self.observer = observer
        self.should_stop = should_stop
        self.prompt_seen = False
        self.canvas_index = 0
        self.step_index = 0
        self.decoder_forwards = 0
        self.first_draft_at: float | None = None
        self.reply_ids: list[int] = []
        self.reached_eos = False
        self.fault = test_switches.fault()
        self.step_delay = test_switches.step_delay()

    def _until_eos(self, ids: Sequence[int]) -> tuple[list[int], bool]:
        for position, token in enumerate(ids):
            if token in self.eos_ids:
                return list(ids[:position]), True
        return list(ids), False

    def put_draft(self, value, **_: Any) -> None:
        if self.first_draft_at is None:
            self.first_draft_at = time.perf_counter()
        self.decoder_forwards += 1
        test_switches.apply_step_fault(self.fault, self.decoder_forwards)
        ids, _ = self._until_eos(value[0].tolist())
        sampler = getattr(self.model, "_canvas_chat_sampler", None)
        count = len(ids)
        if sampler is not None and sampler.accepted_token_mask is not None:
            settled = sampler.accepted_token_mask[0, :count].tolist()
            entropy = sampler.last_token_entropy[0, :count]
            buckets = torch.bucketize(entropy, torch.tensor(ENTROPY_BUCKET_EDGES, dtype=entropy.dtype)).tolist()
        else:
            settled, buckets = [True] * count, [0] * count
        self.observer.on_step(
            StepReport(self.canvas_index, self.step_index, self.max_steps, ids, settled, buckets)
        )
        self.step_index += 1
        if self.step_delay:
            time.sleep(self.step_delay)
        if self.should_stop():
            raise GenerationCancelled()

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        ids, reached_eos = self._until_eos(value[0].tolist())
        self.reply_ids.extend(ids)
        self.reached_eos = reached_eos
        self.observer.on_canvas(CanvasReport(self.canvas_index, ids, self.step_index, reached_eos))
        self.canvas_index += 1
        self.step_index = 0

    def end(self) -> None:
        pass


class ForcedReplyProcessor:
    """Test switch: steers the real denoising loop towards a chosen reply.

    Adds a large bias to the chosen token at a growing, shuffled set of positions, so a
    canvas settles over several steps the way a trained model's would.
    """

    BIAS = 50.0
    REVEAL_STEPS = 4

    def __init__(self, target_ids: list[int], pad_id: int, prompt_length: int, canvas_length: int, max_steps: int):
        self.target_ids = target_ids
        self.pad_id = pad_id
        self.prompt_length = prompt_length
        self.canvas_length = canvas_length
        self.max_steps = max_steps
        order = list(range(canvas_length))
        random.Random(1234).shuffle(order)  # its own RNG: torch's must stay untouched
        self.rank = [0] * canvas_length
        for rank, position in enumerate(order):
            self.rank[position] = rank

    def __call__(self, input_ids, scores, cur_step):
        steps_done = self.max_steps - int(cur_step)
        per_step = math.ceil(self.canvas_length / min(self.REVEAL_STEPS, self.max_steps))
        revealed = (steps_done + 1) * per_step
        offset = input_ids.shape[1] - self.prompt_length
        scores = scores.clone()
        for position in range(self.canvas_length):
            if self.rank[position] >= revealed:
                continue
            index = offset + position
            token = self.target_ids[index] if index < len(self.target_ids) else self.pad_id
            scores[:, position, token] += self.BIAS
        return scores


def eos_token_ids(model, tokenizer) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def generation_kwargs(model, settings: GenerationSettings) -> dict[str, Any]:
    """generate() keyword arguments: given settings override the model's generation config."""
    kwargs: dict[str, Any] = {
        # Always passed: the checkpoint's default is a single canvas.
        "max_new_tokens": settings.max_new_tokens or model.generation_config.max_new_tokens or 256,
    }
    if settings.max_denoising_steps is not None:
        kwargs["max_denoising_steps"] = settings.max_denoising_steps
    if settings.entropy_bound is not None:
        kwargs["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=float(settings.entropy_bound))
    if settings.t_min is not None:
        kwargs["t_min"] = float(settings.t_min)
    if settings.t_max is not None:
        kwargs["t_max"] = float(settings.t_max)
    return kwargs


def check_settings(model, settings: GenerationSettings) -> None:
    problems = settings.problems()
    config = model.generation_config
    t_min = settings.t_min if settings.t_min is not None else config.t_min
    t_max = settings.t_max if settings.t_max is not None else config.t_max
    if not problems and t_min is not None and t_max is not None and t_max <= t_min:
        problems.append(f"t_max must be greater than t_min (got t_min={t_min}, t_max={t_max})")
    if problems:
        raise EngineError("bad_settings", "Invalid generation settings: " + "; ".join(problems) + ".")


def check_context_length(model, prompt_tokens: int, max_new_tokens: int) -> None:
    """A conversation longer than the model's positions is refused up front, not mid-reply."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    canvas = model.config.canvas_length
    needed = prompt_tokens + math.ceil(max_new_tokens / canvas) * canvas  # whole canvases
    if limit and needed > limit:
        raise EngineError(
            "context_too_long",
            f"This conversation is {prompt_tokens:,} tokens long and the reply may add {needed - prompt_tokens:,}, "
            f"but the model reads at most {limit:,}. Start a new chat, shorten the message, "
            "or lower the reply length.",
        )


def run_generation(
    model,
    tokenizer,
    input_ids: list[int],
    settings: GenerationSettings,
    *,
    observer: StepObserver | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    past_key_values: Any = None,
    cached_tokens: int = 0,
    keep_prefix: int = 0,
    forced_reply: str | None = None,
) -> GenerationResult:
    """Generates a reply to `input_ids` (the uncached part of the prompt when a cache is given).

    With `keep_prefix` (a count of prompt tokens, cached ones included), the prompt is encoded in
    two parts and a copy of the cache after the first part comes back as `prefix_cache`.
    """
    from transformers import LogitsProcessorList

    check_settings(model, settings)
    attach_probe(model)
    observer = observer or StepObserver()
    kwargs = generation_kwargs(model, settings)
    prompt_tokens = cached_tokens + len(input_ids)
    check_context_length(model, prompt_tokens, kwargs["max_new_tokens"])
    max_steps = kwargs.get("max_denoising_steps") or model.generation_config.max_denoising_steps or 48
    eos_ids = eos_token_ids(model, tokenizer)
    streamer = _DenoisingStreamer(model, eos_ids, max_steps, observer, should_stop)

    device = next(model.parameters()).device
    started = time.perf_counter()
    prefix_cache = None
    if keep_prefix:
        split = keep_prefix - cached_tokens
        if not 0 <= split < len(input_ids):
            raise ValueError(f"keep_prefix {keep_prefix} is outside the uncached prompt ({cached_tokens}+{len(input_ids)})")
        past_key_values = encode_into_cache(model, input_ids[:split], past_key_values, cached_tokens)
        # generate() appends to the cache it is given: the copy is what the next turn starts from.
        prefix_cache = copy.deepcopy(past_key_values)
        input_ids = input_ids[split:]
    if forced_reply is None:
        forced_reply = test_switches.forced_reply()
    if forced_reply is not None:
        end_of_turn = tokenizer.convert_tokens_to_ids("<turn|>")
        stop_id = end_of_turn if isinstance(end_of_turn, int) and end_of_turn in eos_ids else min(eos_ids)
        target = tokenizer.encode(forced_reply, add_special_tokens=False) + [stop_id]
        pad_id = model.generation_config.pad_token_id or 0
        kwargs["logits_processor"] = LogitsProcessorList(
            [ForcedReplyProcessor(target, pad_id, len(input_ids), model.config.canvas_length, max_steps)]
        )

    prompt = torch.tensor([input_ids], dtype=torch.long, device=device)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    cancelled = False
    output = None
    try:
        output = model.generate(
            prompt, past_key_values=past_key_values, streamer=streamer, return_dict_in_generate=True, **kwargs
        )
    except GenerationCancelled:
        cancelled = True
    wall_s = time.perf_counter() - started

    token_ids = list(streamer.reply_ids)
    if streamer.reached_eos:
        # The canvas's EOS token, for the exact token history of the conversation.
        final_canvas = output.sequences[0, -model.config.canvas_length :].tolist() if output is not None else []
        token_ids.append(next((t for t in final_canvas if t in eos_ids), min(eos_ids)))
    if cancelled:
        finish_reason = "cancelled"
    elif streamer.reached_eos:
        finish_reason = "eos"
    else:
        finish_reason = "length"
    forwards = streamer.decoder_forwards
    canvases = streamer.canvas_index + (1 if cancelled and streamer.step_index else 0)
    first_draft_s = (streamer.first_draft_at - started) if streamer.first_draft_at else wall_s
    stats = GenerationStats(
        time_to_first_draft_s=round(first_draft_s, 6),
        wall_s=round(wall_s, 6),
        new_tokens=len(token_ids),
        tokens_per_s=round(len(token_ids) / wall_s, 3) if wall_s > 0 else 0.0,
        decoder_forwards=forwards,
        tokens_per_forward=round(len(token_ids) / forwards, 4) if forwards else 0.0,
        steps_per_canvas=round(forwards / canvases, 3) if canvases else 0.0,
        canvases=canvases,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
    )
    return GenerationResult(
        token_ids=token_ids,
        finish_reason=finish_reason,
        stats=stats,
        past_key_values=None if cancelled or output is None else output.past_key_values,
        prompt_ids=list(input_ids),
        prefix_cache=prefix_cache,
    )


@torch.no_grad()
def encode_into_cache(model, token_ids: list[int], past_key_values: Any, cached_tokens: int) -> Any:
    """Runs the encoder over `token_ids` after the `cached_tokens` the cache holds, as generate()'s
    prefill would (same position ids and masks; transformers 5.23 internals), and returns the cache."""
    if past_key_values is None:
        from transformers import DynamicCache

        past_key_values = DynamicCache(config=model.config.get_text_config(decoder=True))
    if not token_ids:
        return past_key_values
    device = next(model.parameters()).device
    ids = torch.tensor([token_ids], dtype=torch.long, device=device)
    end = cached_tokens + len(token_ids)
    position_ids = torch.arange(cached_tokens, end, dtype=torch.int32, device=device).unsqueeze(0)
    attention_mask = torch.ones((1, end), dtype=torch.bool, device=device)
    unprocessed, mask_mapping = model._prepare_encoder_inputs(
        input_ids=ids,
        attention_mask=attention_mask,
        encoder_position_ids=position_ids,
        past_key_values=past_key_values,
        is_prefill=True,
        canvas_length=model.config.canvas_length,
        batch_size=1,
    )
    outputs = model.model.encoder(
        input_ids=unprocessed, attention_mask=mask_mapping, past_key_values=past_key_values, position_ids=position_ids
    )
    return outputs.past_key_values


def render_prompt(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The prompt ids exactly as `apply_chat_template(..., add_generation_prompt=True)` gives them."""
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    return list(encoded["input_ids"])
