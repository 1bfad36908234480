"""Runs DiffusionGemma's denoising loop and reports every step as it happens.

The loop is transformers 5.23's `generate()` for one sequence, re-stated so that a step runs on the
device without waiting on the host (one pinned copy per step brings the draft back): the same calls
and random draws, so a seeded run gives exactly the tokens of stock `generate()`.
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


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy (nats), computed as `Categorical(logits).entropy()` does.

    Argument validation is off: it checks the logits with a `.all()` that waits for the GPU.
    """
    return torch.distributions.Categorical(logits=logits, validate_args=False).entropy()


class ProbingSampler(EntropyBoundSampler):
    """transformers' entropy-bound sampler, keeping the last step's per-token entropy (for paths that
    run stock `generate()`, such as engine/rewrite.py)."""

    last_token_entropy: torch.Tensor | None = None

    def accept_canvas(self, current_canvas, denoiser_canvas, logits, cur_step):
        # EntropyBoundSampler.accept_canvas (transformers 5.23) with the entropy kept, unvalidated.
        entropy = token_entropy(logits)
        sorted_token_entropy, sorted_indices = torch.sort(entropy, dim=-1, descending=False)
        cumulative_entropy = torch.cumsum(sorted_token_entropy, dim=-1)
        sorted_selection_mask = cumulative_entropy - sorted_token_entropy <= self.entropy_bound
        self.accepted_token_mask = torch.scatter(
            input=torch.zeros_like(sorted_selection_mask), dim=-1, index=sorted_indices, src=sorted_selection_mask
        )
        self.last_token_entropy = entropy
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


@dataclass(frozen=True)
class StepConstants:
    """Small tensors a denoising step needs, made once per generation on the model's device.

    Building them inside the step (`torch.tensor(..., device=cuda)`) would copy from the host on
    every step and, built on the CPU, mix devices (the crash this replaced).
    """

    entropy_edges: torch.Tensor  # upper edges of the GUI's entropy buckets
    eos_ids: torch.Tensor  # every id that ends the reply
    step_numbers: torch.Tensor  # int32 [1..max_steps]: the logits processors' `cur_step`

    @classmethod
    def build(cls, device: torch.device, eos_ids: set[int], max_steps: int, dtype: torch.dtype = torch.float32):
        return cls(
            entropy_edges=torch.tensor(ENTROPY_BUCKET_EDGES, dtype=dtype, device=device),
            eos_ids=torch.tensor(sorted(eos_ids) or [-1], dtype=torch.long, device=device),
            step_numbers=torch.arange(1, max_steps + 1, dtype=torch.int32, device=device),
        )


@dataclass
class CanvasState:
    """What one denoising step hands the next (batch size 1); all on the model's device."""

    canvas: torch.Tensor  # (1, canvas) the canvas the decoder reads next
    argmax: torch.Tensor  # (1, canvas) the latest argmax prediction (the draft)
    self_conditioning_logits: torch.Tensor | None
    stability_history: torch.Tensor | None  # the stopping rule's last argmax canvases


def draft_summary(
    argmax: torch.Tensor, accepted: torch.Tensor, entropy: torch.Tensor, finished: torch.Tensor,
    constants: StepConstants,
) -> torch.Tensor:
    """Everything a draft needs in one int64 row, so one copy brings it to the host.

    Layout (canvas length C): argmax ids [0, C), accepted mask [C, 2C), entropy buckets [2C, 3C),
    tokens before the first EOS at 3C, the stopping rule's verdict at 3C + 1.
    """
    canvas_length = argmax.shape[-1]
    buckets = torch.bucketize(entropy[0], constants.entropy_edges.to(entropy.dtype))
    is_eos = torch.isin(argmax[0], constants.eos_ids)
    positions = torch.arange(canvas_length, device=argmax.device)
    # Index of the first EOS, or the canvas length when there is none.
    until_eos = torch.where(is_eos, positions, canvas_length).min().reshape(1)
    return torch.cat([argmax[0], accepted[0].long(), buckets.long(), until_eos, finished.long().reshape(1)])


def denoise_step(
    model,
    state: CanvasState,
    *,
    step: int,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    mask_mapping: Any,
    past_key_values: Any,
    entropy_bound: float,
    logits_processor,
    stopping: tuple[int, float] | None,
    constants: StepConstants,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[CanvasState, torch.Tensor]:
    """One denoising step, on the device, with no host sync: the decoder forward, the sampler, the
    stopping rule and the draft's summary (see `draft_summary`).

    Exactly the arithmetic and random draws of transformers 5.23's `_denoising_step` with the
    `EntropyBoundSampler` and `StableAndConfidentStoppingCriteria` for one sequence, so a seeded run
    gives stock `generate()`'s tokens; the entropy is computed once instead of twice, unvalidated.
    `stopping` is (stability_threshold, confidence_threshold), or None for no early stop.
    """
    cur_step = constants.step_numbers[step - 1]
    outputs = model(
        decoder_input_ids=state.canvas,
        self_conditioning_logits=state.self_conditioning_logits,
        decoder_attention_mask=mask_mapping,
        past_key_values=past_key_values,
        decoder_position_ids=position_ids,
        **(model_kwargs or {}),
    )
    logits = logits_processor(input_ids, outputs.logits, cur_step=cur_step)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    batch, canvas_length = state.canvas.shape
    sampled = torch.multinomial(probs.view(-1, probs.shape[-1]), num_samples=1).squeeze(-1).view(batch, canvas_length)
    argmax = torch.argmax(logits, dim=-1)

    # EntropyBoundSampler.accept_canvas: keep the lowest-entropy tokens within the entropy bound.
    entropy = token_entropy(logits)
    sorted_entropy, sorted_indices = torch.sort(entropy, dim=-1, descending=False)
    cumulative = torch.cumsum(sorted_entropy, dim=-1)
    selected = cumulative - sorted_entropy <= entropy_bound
    accepted = torch.scatter(input=torch.zeros_like(selected), dim=-1, index=sorted_indices, src=selected)
    accepted_canvas = torch.where(accepted, sampled, state.canvas)
    # EntropyBoundSampler.renoise_canvas: every other position gets a fresh uniform-random token.
    noise = torch.randint(low=0, high=model.config.text_config.vocab_size, size=(batch, canvas_length), device=argmax.device)
    next_canvas = torch.where(~accepted, noise, accepted_canvas)

    # StableAndConfidentStoppingCriteria on the same logits and entropy.
    history = state.stability_history
    if stopping is None:
        finished = torch.zeros(batch, dtype=torch.bool, device=argmax.device)
    else:
        stability_threshold, confidence_threshold = stopping
        if stability_threshold == 0:
            stable = torch.ones(batch, dtype=torch.bool, device=argmax.device)
        else:
            if history is None:
                history = torch.full((stability_threshold, batch, canvas_length), -1, dtype=argmax.dtype, device=argmax.device)
            stable = (history == argmax[None, :, :]).all(dim=-1).all(dim=0)
            history = torch.roll(history, shifts=-1, dims=0)
            history[-1] = argmax
        finished = stable & (torch.mean(entropy, dim=-1) < confidence_threshold)

    embeddings_dtype = model.model.decoder.embed_tokens.weight.dtype
    next_state = CanvasState(next_canvas, argmax, logits.to(embeddings_dtype), history)
    return next_state, draft_summary(argmax, accepted, entropy, finished, constants)


class DraftChannel:
    """Brings each step's draft summary to the host: one non-blocking copy into pinned memory.

    The copy is the only wait of a step: `fetch()` returns once it has landed.
    """

    def __init__(self, device: torch.device, length: int):
        pinned = device.type == "cuda"
        self.host = torch.empty(length, dtype=torch.long, pin_memory=pinned)
        self.event = torch.cuda.Event() if pinned else None

    def fetch(self, summary: torch.Tensor) -> list[int]:
        self.host.copy_(summary, non_blocking=True)
        if self.event is not None:
            self.event.record()
            self.event.synchronize()
        return self.host.tolist()


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


def new_generation_cache(model, max_length: int):
    """The KV cache a new conversation starts with; the one place that chooses its type.

    Preallocated (engine/kv_cache.py): the encoder writes each canvas in place and a denoising step
    reads the cache and its canvas through views, with the keys, values and masks of transformers'
    DynamicCache (which stock `generate()` makes), so replies are token for token the same.
    """
    from engine.kv_cache import preallocated_cache

    return preallocated_cache(model, model.config.canvas_length, max_length)


@dataclass
class _LoopCounters:
    canvas_index: int = 0
    step_index: int = 0
    decoder_forwards: int = 0
    first_draft_at: float | None = None
    reply_ids: list[int] = field(default_factory=list)
    reached_eos: bool = False
    sequences: torch.Tensor | None = None
    past_key_values: Any = None


def _until_eos(ids: Sequence[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    for position, token in enumerate(ids):
        if token in eos_ids:
            return list(ids[:position]), True
    return list(ids), False


def _denoise(
    model,
    prompt: torch.Tensor,
    *,
    past_key_values: Any,
    generation_config,
    logits_processor,
    eos_ids: set[int],
    observer: StepObserver,
    should_stop: Callable[[], bool],
    counters: _LoopCounters,
    vision_inputs: dict[str, Any] | None = None,
) -> None:
    """transformers 5.23's `DiffusionGemmaGenerationMixin.generate` for one text-only sequence, with
    the denoising step of `denoise_step`: the same calls and random draws, so the same tokens.

    A step waits on the host once, for the copy of its draft summary (ids, accepted mask, entropy
    buckets, EOS position, stop verdict); the verdict decides the early exit as stock `generate`'s
    `torch.all(finished_denoising)` does.
    """
    config = generation_config
    device = prompt.device
    canvas_length = model.config.canvas_length
    input_ids = prompt
    cur_len = input_ids.shape[1] + (past_key_values.get_seq_length() if past_key_values is not None else 0)
    max_length, max_new_tokens = model._prepare_generated_length(config, cur_len)
    max_canvases = math.ceil(max_new_tokens / canvas_length)
    if past_key_values is None:
        past_key_values = new_generation_cache(model, max_length)
    counters.past_key_values = past_key_values
    max_steps = config.max_denoising_steps
    constants = StepConstants.build(device, eos_ids, max_steps)
    fault = test_switches.fault()
    step_delay = test_switches.step_delay()

    finished_sequences = torch.zeros(1, dtype=torch.bool, device=device)
    eos_tensor = torch.tensor(config.eos_token_id, device=device) if config.eos_token_id is not None else None
    encoder_position_ids = torch.arange(cur_len - input_ids.shape[1], cur_len, dtype=torch.int32, device=device).unsqueeze(0)
    decoder_position_ids = torch.arange(cur_len, cur_len + canvas_length, dtype=torch.int32, device=device).unsqueeze(0)
    attention_mask = torch.ones((1, cur_len), dtype=torch.bool, device=device)
    decoder_attention_mask = torch.nn.functional.pad(attention_mask, (0, canvas_length), value=True)
    sampler = model._prepare_sampler(config)
    logits_processor = model._prepare_logits_processor(config, logits_processor)
    ar_stopping = model._prepare_ar_stopping_criteria(config, None)
    stopping = None
    if config.stability_threshold is not None and config.confidence_threshold is not None:
        stopping = (config.stability_threshold, config.confidence_threshold)
    channel = DraftChannel(device, 3 * canvas_length + 2)

    is_prefill = True
    for _ in range(max_canvases):
        # The images go in with the prompt's first encoding only, as in stock `generate()`.
        images = (vision_inputs or {}) if is_prefill else {}
        unprocessed, encoder_masks = model._prepare_encoder_inputs(
            input_ids=input_ids, attention_mask=attention_mask, encoder_position_ids=encoder_position_ids,
            past_key_values=past_key_values, is_prefill=is_prefill, canvas_length=canvas_length, batch_size=1,
            mm_token_type_ids=images.get("mm_token_type_ids"),
        )
        encoded = model.model.encoder(
            input_ids=unprocessed, attention_mask=encoder_masks, past_key_values=past_key_values,
            position_ids=encoder_position_ids,
            **{k: v for k, v in images.items() if k in ("pixel_values", "image_position_ids")},
        )
        past_key_values = encoded.past_key_values
        counters.past_key_values = past_key_values
        is_prefill = False
        # One sequence has no padding: None takes the branch stock `generate()` reaches through
        # `decoder_attention_mask.all()` (a host sync), except on a static cache, whose empty slots
        # need the mask.
        unpadded = None if not past_key_values.is_compileable else decoder_attention_mask
        canvas, self_conditioning, mask_mapping, _ = model._prepare_denoiser_inputs(
            decoder_attention_mask=unpadded, past_key_values=past_key_values, sampler=sampler,
            diffusion_stopping_criteria=None, batch_size=1, device=device, model_kwargs={},
        )
        state = CanvasState(canvas, canvas, self_conditioning, None)
        for step in reversed(range(1, max_steps + 1)):
            state, summary = denoise_step(
                model, state, step=step, input_ids=input_ids, position_ids=decoder_position_ids,
                mask_mapping=mask_mapping, past_key_values=past_key_values, entropy_bound=sampler.entropy_bound,
                logits_processor=logits_processor, stopping=stopping, constants=constants,
            )
            row = channel.fetch(summary)
            if counters.first_draft_at is None:
                counters.first_draft_at = time.perf_counter()
            counters.decoder_forwards += 1
            test_switches.apply_step_fault(fault, counters.decoder_forwards)
            count = row[3 * canvas_length]
            observer.on_step(
                StepReport(
                    counters.canvas_index, counters.step_index, max_steps,
                    row[:count],
                    [bool(v) for v in row[canvas_length : canvas_length + count]],
                    row[2 * canvas_length : 2 * canvas_length + count],
                )
            )
            counters.step_index += 1
            if step_delay:
                time.sleep(step_delay)
            if should_stop():
                raise GenerationCancelled()
            if row[-1]:
                break

        input_ids = torch.cat([input_ids, state.argmax], dim=-1)
        input_ids, finished_sequences = model._finalize_canvas(
            input_ids=input_ids, finished_sequences=finished_sequences, generation_config=config,
            stopping_criteria=ar_stopping, canvas_length=canvas_length, eos_tensor=eos_tensor,
        )
        counters.sequences = input_ids
        ids, reached_eos = _until_eos(input_ids[0, -canvas_length:].tolist(), eos_ids)
        counters.reply_ids.extend(ids)
        counters.reached_eos = reached_eos
        observer.on_canvas(CanvasReport(counters.canvas_index, ids, counters.step_index, reached_eos))
        counters.canvas_index += 1
        counters.step_index = 0
        if bool(finished_sequences.all()):
            break
        cur_len, decoder_attention_mask, attention_mask, encoder_position_ids, decoder_position_ids = (
            model._prepare_kwargs_for_next_canvas(
                attention_mask=attention_mask, decoder_attention_mask=decoder_attention_mask,
                decoder_position_ids=decoder_position_ids, canvas_length=canvas_length, cur_len=cur_len,
            )
        )


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
    vision_inputs: dict[str, Any] | None = None,
) -> GenerationResult:
    """Generates a reply to `input_ids` (the uncached part of the prompt when a cache is given).

    With `keep_prefix` (a count of prompt tokens, cached ones included), the prompt is encoded in
    two parts and a copy of the cache after the first part comes back as `prefix_cache`.
    """
    from transformers import LogitsProcessorList

    check_settings(model, settings)
    observer = observer or StepObserver()
    kwargs = generation_kwargs(model, settings)
    prompt_tokens = cached_tokens + len(input_ids)
    check_context_length(model, prompt_tokens, kwargs["max_new_tokens"])
    eos_ids = eos_token_ids(model, tokenizer)
    logits_processor = kwargs.pop("logits_processor", None)
    generation_config, unused = model._prepare_generation_config(None, **kwargs)
    if unused:
        raise EngineError("bad_settings", f"Unknown generation settings: {', '.join(sorted(unused))}.")
    max_steps = generation_config.max_denoising_steps

    device = next(model.parameters()).device
    started = time.perf_counter()
    prefix_cache = None
    if keep_prefix and vision_inputs:
        raise ValueError("a prompt with images is encoded whole (keep_prefix must be 0)")
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
        logits_processor = LogitsProcessorList(
            [ForcedReplyProcessor(target, pad_id, len(input_ids), model.config.canvas_length, max_steps)]
        )

    prompt = torch.tensor([input_ids], dtype=torch.long, device=device)
    counters = _LoopCounters()
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    cancelled = False
    try:
        with torch.no_grad():
            _denoise(
                model, prompt, past_key_values=past_key_values, generation_config=generation_config,
                logits_processor=logits_processor, eos_ids=eos_ids, observer=observer, should_stop=should_stop,
                counters=counters, vision_inputs=vision_inputs,
            )
    except GenerationCancelled:
        cancelled = True
    wall_s = time.perf_counter() - started

    token_ids = list(counters.reply_ids)
    if counters.reached_eos:
        # The canvas's EOS token, for the exact token history of the conversation.
        final_canvas = counters.sequences[0, -model.config.canvas_length :].tolist() if counters.sequences is not None else []
        token_ids.append(next((t for t in final_canvas if t in eos_ids), min(eos_ids)))
    if cancelled:
        finish_reason = "cancelled"
    elif counters.reached_eos:
        finish_reason = "eos"
    else:
        finish_reason = "length"
    forwards = counters.decoder_forwards
    canvases = counters.canvas_index + (1 if cancelled and counters.step_index else 0)
    first_draft_s = (counters.first_draft_at - started) if counters.first_draft_at else wall_s
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
        past_key_values=None if cancelled or counters.sequences is None else counters.past_key_values,
        prompt_ids=list(input_ids),
        prefix_cache=prefix_cache,
    )


@torch.no_grad()
def encode_into_cache(model, token_ids: list[int], past_key_values: Any, cached_tokens: int) -> Any:
    """Runs the encoder over `token_ids` after the `cached_tokens` the cache holds, as generate()'s
    prefill would (same position ids and masks; transformers 5.23 internals), and returns the cache."""
    if past_key_values is None:
        past_key_values = new_generation_cache(model, cached_tokens + len(token_ids) + model.config.canvas_length)
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
