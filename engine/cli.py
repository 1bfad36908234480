"""`python -m engine generate`: one-shot headless generation for scripts and benchmarks."""

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
    parser.add_argument("--steps", type=int, help="maximum denoising steps per canvas")
    parser.add_argument("--entropy-bound", type=float)
    parser.add_argument("--t-min", type=float)
    parser.add_argument("--t-max", type=float)
    parser.add_argument("--seed", type=int, help="torch.manual_seed(SEED) right before generating")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quantization", choices=["auto", "none", "bf16", "nf4", "nf4-double"], default="auto")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    return parser


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
