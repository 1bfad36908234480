"""`python -m engine generate` and `rewrite`: one-shot headless generation and span rewriting."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from engine.errors import EngineError
from engine.protocol import GenerationSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine generate", description=__doc__)
    parser.add_argument("--model", required=True, help="a model folder or a downloaded hub id")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--system", default="", help="system prompt")
    parser.add_argument("--max-new-tokens", type=int)
    add_denoising_and_device_options(parser, "generating")
    return parser


def add_denoising_and_device_options(parser: argparse.ArgumentParser, doing: str) -> None:
    """The denoising settings, device, quantization and --json that generate and rewrite share."""
    parser.add_argument("--steps", type=int, help="maximum denoising steps per canvas")
    parser.add_argument("--entropy-bound", type=float)
    parser.add_argument("--t-min", type=float)
    parser.add_argument("--t-max", type=float)
    parser.add_argument("--seed", type=int, help=f"torch.manual_seed(SEED) right before {doing}")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quantization", choices=["auto", "none", "bf16", "nf4", "nf4-double"], default="auto")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        max_denoising_steps=args.steps,
        entropy_bound=args.entropy_bound,
        t_min=args.t_min,
        t_max=args.t_max,
        seed=args.seed,
    )


def chat_messages(prompt: str, system: str = "") -> list[dict[str, str]]:
    messages = [{"role": "user", "content": prompt}]
    if system.strip():
        messages.insert(0, {"role": "system", "content": system})
    return messages


def generate_once(loaded, prompt: str, settings: GenerationSettings, system: str = "") -> dict:
    """Generates one reply in-process; the result is what `--json` prints."""
    return generate_chat(loaded, chat_messages(prompt, system), settings)


def generate_chat(loaded, messages: list[dict[str, str]], settings: GenerationSettings) -> dict:
    """The reply to a whole chat (ending with a user turn), encoded afresh by the chat template:
    no KV cache, so it is the reference a cached multi-turn reply must equal."""
    from engine.generation import encode_prompt, run_generation

    input_ids = encode_prompt(loaded.tokenizer, messages)
    result = run_generation(loaded.model, loaded.tokenizer, input_ids, settings)
    return {
        "text": loaded.tokenizer.decode(result.token_ids, skip_special_tokens=True),
        "token_ids": result.token_ids,
        "finish_reason": result.finish_reason,
        **dataclasses.asdict(result.stats),
    }


def _cli_message(exc: EngineError, model: str) -> str:
    """The engine's message in command-line terms (the app's says to open Model setup)."""
    if exc.code == "model_not_downloaded":
        return (
            f"{model} has not been downloaded yet: download it first with `hf download {model}` "
            "(or from the app's Model setup), or pass --model a local folder that holds it."
        )
    return exc.message


def generate_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if not args.prompt.strip():
        print('error: the prompt is empty: pass the question, e.g. --prompt "What is 3 + 4?"', file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    problems = settings.problems()
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    from engine.loading import load_model

    try:
        loaded = load_model(args.model, device=args.device, quantization=args.quantization)
        outcome = generate_once(loaded, args.prompt, settings, args.system)
    except EngineError as exc:
        print(f"error: {_cli_message(exc, args.model)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(outcome, ensure_ascii=False))
    else:
        print(outcome["text"])
    return 0


def build_rewrite_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine rewrite",
        description="Re-denoise a span of a reply in place; every token outside the span is kept.",
    )
    parser.add_argument("--model", required=True, help="a model folder or a downloaded hub id")
    parser.add_argument("--text", required=True, help="the reply whose span is rewritten")
    parser.add_argument(
        "--span", required=True, metavar="START:END", help="character offsets into --text, widened to whole tokens"
    )
    parser.add_argument("--prompt", default="", help="the user message the reply answers")
    parser.add_argument("--system", default="", help="system prompt")
    parser.add_argument("--instruction", default="", help="how to rewrite (a system note before the conversation)")
    add_denoising_and_device_options(parser, "rewriting")
    return parser


def parse_span(value: str) -> tuple[int, int]:
    start, colon, end = value.partition(":")
    try:
        if not colon:
            raise ValueError
        return int(start), int(end)
    except ValueError:
        raise EngineError(
            "bad_span", f"--span must be START:END in characters, such as 4:17 (got {value!r})."
        ) from None


def rewrite_once(loaded, text: str, char_span: tuple[int, int], settings: GenerationSettings, *,
                 prompt: str = "", system: str = "", instruction: str = "") -> dict:
    """Rewrites the character span of `text` in-process; the result is what `--json` prints."""
    from engine.generation import eos_token_ids
    from engine.rewrite import character_ranges, rewrite_span, token_span_of_characters

    tokenizer = loaded.tokenizer
    text_ids = tokenizer.encode(text, add_special_tokens=False)
    if tokenizer.decode(text_ids, skip_special_tokens=True) != text:
        raise EngineError("bad_span", "This text does not come back unchanged from the model's tokenizer, so "
                          "character offsets into it are ambiguous.")
    start, end = token_span_of_characters(tokenizer, text_ids, text, *char_span)
    # The text is a whole reply: it ends with the turn's end, as the model wrote it.
    eos_ids = eos_token_ids(loaded.model, tokenizer)
    end_of_turn = tokenizer.convert_tokens_to_ids("<turn|>")
    reply_ids = text_ids + [end_of_turn if isinstance(end_of_turn, int) and end_of_turn in eos_ids else min(eos_ids)]
    result = rewrite_span(loaded.model, tokenizer, chat_messages(prompt, system), reply_ids, start, end, settings,
                          instruction=instruction)
    new_ids = result.token_ids[: len(text_ids)]
    new_text, rewritten, kept = character_ranges(tokenizer, new_ids, start, end)
    return {
        "text": new_text,
        "kept": kept,
        "rewritten": rewritten,
        "token_ids": new_ids,
        "original_token_ids": text_ids,
        "span_tokens": [start, end],
        "finish_reason": result.finish_reason,
        **dataclasses.asdict(result.stats),
    }


def rewrite_main(argv: list[str]) -> int:
    args = build_rewrite_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    settings = GenerationSettings(
        max_denoising_steps=args.steps, entropy_bound=args.entropy_bound, t_min=args.t_min, t_max=args.t_max,
        seed=args.seed,
    )
    problems = settings.problems()
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        char_span = parse_span(args.span)
        # Checked before the model loads: a bad span is a typo, not worth a minute of loading.
        if char_span[0] == char_span[1]:
            raise EngineError("bad_span", "The span is empty: select at least one character to rewrite.")
        if not 0 <= char_span[0] < char_span[1] <= len(args.text):
            raise EngineError(
                "bad_span",
                f"The span {args.span} is outside the text, which has {len(args.text)} characters "
                f"(0:{len(args.text)}).",
            )
        from engine.loading import load_model

        loaded = load_model(args.model, device=args.device, quantization=args.quantization)
        outcome = rewrite_once(loaded, args.text, char_span, settings, prompt=args.prompt, system=args.system,
                               instruction=args.instruction)
    except EngineError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(outcome, ensure_ascii=False))
    else:
        print(outcome["text"])
    return 0
