"""Rewrites a span of a reply in place: the span is re-noised and denoised again, the rest held.

transformers' own `generate()` runs the denoising loop, one canvas at a time, with three hooks:
the starting canvas (`decoder_input_ids`: the reply's tokens with the span replaced by uniform
noise, as DiffusionGemma's own noise is); a logits processor that pins every held position to
its token, so the argmax canvas (what `generate()` commits), the sampled canvas and the
self-conditioning all keep it bit for bit — a pinned position has zero entropy, so the stock
entropy-bound sampler always accepts it and never re-noises it; and a stopping rule judged on
the free positions only.

- Canvases. The reply was generated canvas by canvas (`config.canvas_length` tokens each, from
  the first reply token). A canvas that holds part of the span is re-denoised with the prompt and
  every reply token before it as context (encoded into the KV cache). A span that crosses a canvas
  boundary is rewritten canvas by canvas, left to right: each canvas sees the already rewritten
  part before it as context and its own held tokens on both sides of the span. As in generation,
  a canvas never sees the tokens of later canvases.
- Positions after the reply's end in its last canvas are free (noised and denoised, then
  dropped), as they were when the reply was generated. The span keeps its token count, and
  cannot take an end-of-turn or other special token: the reply must not end inside it.
- An instruction cannot be a turn after the reply (the reply is rewritten in place, not
  continued); it reaches the model as a system note before the conversation. It is a soft
  steer: a model that was not trained on such notes (the demo model) mostly ignores it.
- Cancelling leaves the reply as it was: a half-rewritten span is never returned.
"""

from __future__ import annotations

import logging
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer
from transformers.models.diffusion_gemma.generation_diffusion_gemma import StableAndConfidentStoppingCriteria

from engine import test_switches
from engine.errors import EngineError, GenerationCancelled
from engine.generation import (
    ENTROPY_BUCKET_EDGES,
    attach_probe,
    check_context_length,
    check_settings,
    encode_prompt,
    eos_token_ids,
    generation_kwargs,
)
from engine.protocol import GenerationSettings, GenerationStats

log = logging.getLogger("canvas_chat.engine.rewrite")

INSTRUCTION_NOTE = "When you write your reply, follow this instruction: {instruction}"


@dataclass(frozen=True)
class CanvasSpan:
    """The part of a span that lies in one canvas, in reply-token indices."""

    canvas_index: int
    canvas_start: int  # the canvas's first reply-token index
    start: int
    end: int


@dataclass
class SpanDraftReport:
    canvas_index: int
    step_index: int
    max_steps: int
    start: int  # reply-token indices this draft covers (the span's part in this canvas)
    end: int
    token_ids: list[int]  # argmax draft of those positions
    settled: list[bool]
    entropy_buckets: list[int]


@dataclass
class RewriteResult:
    token_ids: list[int]  # the whole reply with the span replaced (the original one if cancelled)
    start: int
    end: int
    finish_reason: str  # "rewritten" or "cancelled"
    stats: GenerationStats


def canvas_spans(start: int, end: int, canvas_length: int) -> list[CanvasSpan]:
    """Splits the reply-token span [start, end) at canvas boundaries."""
    parts = []
    position = start
    while position < end:
        index = position // canvas_length
        canvas_start = index * canvas_length
        part_end = min(end, canvas_start + canvas_length)
        parts.append(CanvasSpan(index, canvas_start, position, part_end))
        position = part_end
    return parts


def rewritable_length(reply_ids: list[int], eos_ids: set[int]) -> int:
    """How many leading reply tokens a span may cover: all but a final end-of-turn."""
    return len(reply_ids) - 1 if reply_ids and reply_ids[-1] in eos_ids else len(reply_ids)


def check_span(reply_ids: list[int], start: int, end: int, eos_ids: set[int]) -> None:
    limit = rewritable_length(reply_ids, eos_ids)
    if limit == 0:
        raise EngineError("bad_span", "This reply has no text to rewrite.")
    if start < 0 or end > limit or start > end:
        raise EngineError(
            "bad_span", f"The span {start}:{end} is outside the reply, which has {limit} tokens of text (0:{limit})."
        )
    if start == end:
        raise EngineError("bad_span", "The span is empty: select at least one character to rewrite.")


def rewrite_messages(messages: list[dict[str, str]], instruction: str) -> list[dict[str, str]]:
    """The conversation the rewrite is conditioned on: the instruction as a system note."""
    instruction = instruction.strip()
    if not instruction:
        return list(messages)
    note = INSTRUCTION_NOTE.format(instruction=instruction)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"].rstrip() + "\n\n" + note}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


class HeldPositionsProcessor:
    """Pins each held position's logits to its token; bans special tokens inside the span.

    Runs first in generate()'s logits processors, so the temperature schedule, the sampled
    canvas, the argmax canvas and the self-conditioning all see the pinned distribution.
    """

    def __init__(self, canvas: torch.Tensor, held: torch.Tensor, span: torch.Tensor, banned_ids: list[int]):
        self.canvas = canvas  # (1, canvas_length)
        self.held = held  # (canvas_length,) bool
        self.span = span  # (canvas_length,) bool
        self.banned_ids = torch.tensor(sorted(banned_ids), dtype=torch.long, device=canvas.device)

    def __call__(self, input_ids, scores, cur_step):
        pinned = torch.full_like(scores, float("-inf"))
        pinned.scatter_(-1, self.canvas.unsqueeze(-1), 0.0)
        scores = torch.where(self.held[None, :, None], pinned, scores)
        if len(self.banned_ids):
            ban = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
            ban[self.banned_ids[self.banned_ids < scores.shape[-1]]] = True
            scores = scores.masked_fill(self.span[None, :, None] & ban[None, None, :], float("-inf"))
        return scores


class FreePositionsStopping(StableAndConfidentStoppingCriteria):
    """transformers' stable-and-confident stop, judged on the free positions only.

    Held positions are certain by construction; counting them in the mean entropy would stop
    the loop before the span has settled.
    """

    def __init__(self, stability_threshold: int, confidence_threshold: float, free: torch.Tensor):
        super().__init__(stability_threshold, confidence_threshold)
        self.free = free

    def __call__(self, argmax_canvas, logits, **kwargs):
        return super().__call__(argmax_canvas[:, self.free], logits[:, self.free], **kwargs)


class _SpanStreamer(BaseStreamer):
    """Reports the span's part of each draft, and raises to cancel between steps."""

    def __init__(self, model, part: CanvasSpan, max_steps: int, on_draft, should_stop):
        self.model = model
        self.part = part
        self.max_steps = max_steps
        self.on_draft = on_draft
        self.should_stop = should_stop
        self.step_index = 0
        self.first_draft_at: float | None = None
        self.fault = test_switches.fault()
        self.step_delay = test_switches.step_delay()

    def put_draft(self, value, **_: Any) -> None:
        if self.first_draft_at is None:
            self.first_draft_at = time.perf_counter()
        self.step_index += 1
        test_switches.apply_step_fault(self.fault, self.step_index)
        lo, hi = self.part.start - self.part.canvas_start, self.part.end - self.part.canvas_start
        sampler = self.model._canvas_chat_sampler
        entropy = sampler.last_token_entropy[0, lo:hi]
        edges = torch.tensor(ENTROPY_BUCKET_EDGES, dtype=entropy.dtype, device=entropy.device)
        buckets = torch.bucketize(entropy, edges)
        self.on_draft(
            SpanDraftReport(
                canvas_index=self.part.canvas_index,
                step_index=self.step_index - 1,
                max_steps=self.max_steps,
                start=self.part.start,
                end=self.part.end,
                token_ids=value[0, lo:hi].tolist(),
                settled=sampler.accepted_token_mask[0, lo:hi].tolist(),
                entropy_buckets=buckets.tolist(),
            )
        )
        if self.step_delay:
            time.sleep(self.step_delay)
        if self.should_stop():
            raise GenerationCancelled()

    def put(self, value) -> None:
        pass

    def end(self) -> None:
        pass


class _HeldGeneration:
    """Points `model.generate()` at the free-positions stopping rule for one canvas."""

    def __init__(self, model, held: torch.Tensor):
        self.model = model
        self.held = held

    def __enter__(self):
        held = self.held
        attach_probe(self.model)  # the probing sampler: drafts report its entropy and accepted mask

        def prepare_stopping(model, generation_config):
            if generation_config.stability_threshold is None or generation_config.confidence_threshold is None:
                return None
            return FreePositionsStopping(
                generation_config.stability_threshold, generation_config.confidence_threshold, ~held
            )

        self.model._prepare_diffusion_stopping_criteria = types.MethodType(prepare_stopping, self.model)
        return self

    def __exit__(self, *exc_info):
        self.model.__dict__.pop("_prepare_diffusion_stopping_criteria", None)


def banned_in_span(model, tokenizer) -> list[int]:
    banned = set(eos_token_ids(model, tokenizer)) | set(getattr(tokenizer, "all_special_ids", []) or [])
    pad = model.generation_config.pad_token_id
    if pad is not None:
        banned.add(pad)
    return sorted(banned)


def rewrite_span(
    model,
    tokenizer,
    messages: list[dict[str, str]],
    reply_ids: list[int],
    start: int,
    end: int,
    settings: GenerationSettings,
    *,
    instruction: str = "",
    on_draft: Callable[[SpanDraftReport], None] = lambda report: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> RewriteResult:
    """Re-denoises reply tokens [start, end) after `messages` (ending with the user turn).

    Every other reply token comes back bit-identical.
    """
    from transformers import LogitsProcessorList

    check_settings(model, settings)
    eos_ids = eos_token_ids(model, tokenizer)
    check_span(reply_ids, start, end, eos_ids)
    if not messages or messages[-1]["role"] != "user":
        raise EngineError("bad_settings", "The conversation before the reply must end with a user message.")
    canvas_length = model.config.canvas_length
    vocab_size = model.config.text_config.vocab_size
    prompt_ids = encode_prompt(tokenizer, rewrite_messages(messages, instruction))
    parts = canvas_spans(start, end, canvas_length)
    check_context_length(model, len(prompt_ids) + parts[-1].canvas_start, canvas_length)

    kwargs = generation_kwargs(model, settings)
    kwargs["max_new_tokens"] = canvas_length  # exactly one canvas per generate() call
    kwargs["disable_compile"] = True  # the compiled sampler would be the first request's, not this one's
    max_steps = kwargs.get("max_denoising_steps") or model.generation_config.max_denoising_steps or 48
    banned = banned_in_span(model, tokenizer)
    device = next(model.parameters()).device

    new_ids = list(reply_ids)
    started = time.perf_counter()
    first_draft_at: float | None = None
    forwards = 0
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    try:
        for part in parts:
            reply_end = min(len(new_ids), part.canvas_start + canvas_length)
            known = new_ids[part.canvas_start : reply_end]
            lo, hi = part.start - part.canvas_start, part.end - part.canvas_start
            held = torch.zeros(canvas_length, dtype=torch.bool, device=device)
            held[: len(known)] = True
            held[lo:hi] = False
            span = torch.zeros(canvas_length, dtype=torch.bool, device=device)
            span[lo:hi] = True
            canvas = torch.zeros((1, canvas_length), dtype=torch.long, device=device)
            canvas[0, : len(known)] = torch.tensor(known, dtype=torch.long, device=device)
            noise = torch.randint(0, vocab_size, (1, canvas_length), device=device)
            start_canvas = torch.where(held[None, :], canvas, noise)

            streamer = _SpanStreamer(model, part, max_steps, on_draft, should_stop)
            context = torch.tensor([prompt_ids + new_ids[: part.canvas_start]], dtype=torch.long, device=device)
            processor = HeldPositionsProcessor(canvas, held, span, banned)
            with _HeldGeneration(model, held):
                try:
                    output = model.generate(
                        context,
                        decoder_input_ids=start_canvas,
                        streamer=streamer,
                        return_dict_in_generate=True,
                        logits_processor=LogitsProcessorList([processor]),
                        **kwargs,
                    )
                finally:
                    forwards += streamer.step_index
                    if first_draft_at is None:
                        first_draft_at = streamer.first_draft_at
            # The canvas as the loop committed it, held positions included: they are kept by
            # the loop itself, and checked here, not pasted back from the request.
            denoised = output.sequences[0, context.shape[1] : context.shape[1] + len(known)].tolist()
            held_known = held[: len(known)].tolist()
            if [t for t, h in zip(denoised, held_known) if h] != [t for t, h in zip(known, held_known) if h]:
                raise EngineError(
                    "internal", "The rewrite changed text outside the selection, so it was discarded. Nothing changed."
                )
            new_ids[part.canvas_start : reply_end] = denoised
        finish_reason = "rewritten"
    except GenerationCancelled:
        new_ids, finish_reason = list(reply_ids), "cancelled"
    wall_s = time.perf_counter() - started
    rewritten = end - start if finish_reason == "rewritten" else 0
    canvases = len(parts)
    stats = GenerationStats(
        time_to_first_draft_s=round((first_draft_at - started) if first_draft_at else wall_s, 6),
        wall_s=round(wall_s, 6),
        new_tokens=rewritten,
        tokens_per_s=round(rewritten / wall_s, 3) if wall_s > 0 else 0.0,
        decoder_forwards=forwards,
        tokens_per_forward=round(rewritten / forwards, 4) if forwards else 0.0,
        steps_per_canvas=round(forwards / canvases, 3) if canvases else 0.0,
        canvases=canvases,
        prompt_tokens=len(prompt_ids) + parts[0].canvas_start,
    )
    return RewriteResult(new_ids, start, end, finish_reason, stats)


# ---------------------------------------------------------------------------- characters and tokens


def _decoded_length(tokenizer, ids: list[int]) -> int:
    return len(tokenizer.decode(ids, skip_special_tokens=True))


def character_ranges(tokenizer, reply_ids: list[int], start: int, end: int) -> tuple[str, list[int], list[list[int]]]:
    """The reply's text, the rewritten span's [start, end) in it, and the kept ranges around it."""
    text = tokenizer.decode(reply_ids, skip_special_tokens=True)
    char_start = min(_decoded_length(tokenizer, reply_ids[:start]), len(text))
    char_end = max(char_start, min(_decoded_length(tokenizer, reply_ids[:end]), len(text)))
    kept = [[a, b] for a, b in ((0, char_start), (char_end, len(text))) if b > a]
    return text, [char_start, char_end], kept


def token_span_of_characters(
    tokenizer, token_ids: list[int], text: str, char_start: int, char_end: int
) -> tuple[int, int]:
    """Widens the character range [char_start, char_end) of `text` to whole tokens."""
    if char_start == char_end:
        raise EngineError("bad_span", "The span is empty: select at least one character to rewrite.")
    if not 0 <= char_start < char_end <= len(text):
        raise EngineError(
            "bad_span",
            f"The span {char_start}:{char_end} is outside the text, which has {len(text)} characters (0:{len(text)}).",
        )
    # Decoded prefix lengths grow with the token count, so both ends are found by bisection.
    def first_token_ending_after(offset: int) -> int:
        lo, hi = 0, len(token_ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if _decoded_length(tokenizer, token_ids[: mid + 1]) > offset:
                hi = mid
            else:
                lo = mid + 1
        return lo

    start = first_token_ending_after(char_start)
    end = first_token_ending_after(char_end - 1) + 1
    return start, min(end, len(token_ids))
