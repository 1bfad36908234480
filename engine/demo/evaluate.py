"""Exact-match accuracy of the demo model per skill on the held-out questions, alone and late in a chat.

    python -m engine.demo.evaluate --model resources/demo-model --seed 0 [--turns 1,3,6] [--via-cli 12]

Each held-out question is asked alone (turn 1) and as the 3rd and 6th question of a chat whose
earlier turns are other held-out and training questions with their right answers
(`corpus.held_out_chats`); the whole chat is encoded by the chat template, with no KV cache.

Questions run through the code of `python -m engine generate` (`engine.loading.load_model` and
`engine.cli.generate_once`) with the model loaded once in-process; `--via-cli N` also sends N
of them through the real `python -m engine generate --json` subprocess and checks that it
gives the same text. `--backend stock` uses stock `generate()` instead, which the engine is
defined to match token for token.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from engine.demo.corpus import SKILLS, Example, held_out_chats

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "resources" / "demo-model"


class EngineAnswerer:
    """Answers through `python -m engine generate`'s own code, with the model loaded once."""

    name = "engine.cli.generate_chat (in-process, no KV cache)"

    def __init__(self, model_dir: Path):
        from engine.loading import load_model

        # The CLI's defaults: --device auto --quantization auto.
        self.loaded = load_model(str(model_dir), device="auto", quantization="auto")

    def __call__(self, messages: list[dict[str, str]], seed: int) -> str:
        from engine.cli import generate_chat
        from engine.protocol import GenerationSettings

        return generate_chat(self.loaded, messages, GenerationSettings(seed=seed))["text"]


class StockAnswerer:
    """Stock `generate()` with the folder's generation config: the engine's reference."""

    name = "stock generate()"

    def __init__(self, model_dir: Path):
        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def __call__(self, messages: list[dict[str, str]], seed: int) -> str:
        import torch

        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        ids = torch.tensor([list(encoded["input_ids"])])
        torch.manual_seed(seed)
        out = self.model.generate(ids, max_new_tokens=self.model.generation_config.max_new_tokens)
        sequences = out.sequences if hasattr(out, "sequences") else out
        return self.tokenizer.decode(sequences[0, ids.shape[1] :], skip_special_tokens=True)


def cli_answer(model_dir: Path, question: str, seed: int) -> dict:
    """One question through the real `python -m engine generate --json` subprocess."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "generate", "--model", str(model_dir), "--prompt", question,
         "--json", "--seed", str(seed)],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"engine generate failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_answerer(model_dir: Path, backend: str):
    if backend == "stock":
        return StockAnswerer(model_dir)
    try:
        import engine.cli  # noqa: F401

        return EngineAnswerer(model_dir)
    except ImportError:
        if backend == "engine":
            raise
        return StockAnswerer(model_dir)


def evaluate(answer, examples: list[Example], seed: int, show_errors: bool = True) -> dict[str, tuple[int, int]]:
    scores: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for example in examples:
        text = answer(example.messages(), seed).strip()
        ok = text == example.answer
        scores[example.skill][0] += ok
        scores[example.skill][1] += 1
        if not ok and show_errors:
            turn = f" (turn {len(example.history) + 1})" if example.history else ""
            print(f"  MISS [{example.skill}]{turn} {example.question!r}: got {text!r}, want {example.answer!r}")
    return {skill: tuple(v) for skill, v in scores.items()}


def print_scores(title: str, scores: dict[str, tuple[int, int]], per_question_ms: float) -> tuple[int, int]:
    right = sum(r for r, _ in scores.values())
    total = sum(n for _, n in scores.values())
    print(title)
    for skill in SKILLS:
        if skill in scores:
            r, n = scores[skill]
            print(f"  {skill:<9} {r:>3}/{n:<3} {100 * r / n:6.1f}%")
    print(f"  {'all':<9} {right:>3}/{total:<3} {100 * right / max(1, total):6.1f}%   ({per_question_ms:.0f} ms per question)")
    return right, total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skills", default=",".join(SKILLS))
    parser.add_argument("--turns", default="1,3,6",
                        help="ask each held-out question as these turns of a chat (1: alone)")
    parser.add_argument("--backend", choices=("auto", "engine", "stock"), default="auto")
    parser.add_argument("--via-cli", type=int, default=0, metavar="N",
                        help="also check N questions through `python -m engine generate` subprocesses")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    wanted = set(args.skills.split(","))
    turns = [int(t) for t in args.turns.split(",")]
    answer = make_answerer(args.model, args.backend)
    by_turn: dict[int, dict[str, tuple[int, int]]] = {}
    summary = []
    for turn in turns:
        examples = [e for e in held_out_chats(turn) if e.skill in wanted]
        started = time.perf_counter()
        scores = evaluate(answer, examples, args.seed)
        per_question_ms = 1000 * (time.perf_counter() - started) / max(1, len(examples))
        kind = "single-turn (asked alone)" if turn == 1 else f"multi-turn (question {turn} of a chat)"
        right, total = print_scores(
            f"held-out exact match, {kind}, via {answer.name}, seed {args.seed}, {args.model}:",
            scores, per_question_ms,
        )
        by_turn[turn] = scores
        summary.append(f"turn {turn}: {right}/{total} ({100 * right / max(1, total):.1f}%)")
    print("summary: " + "; ".join(summary))
    examples = [e for e in held_out_chats(1) if e.skill in wanted]

    cli_mismatches = 0
    if args.via_cli:
        step = max(1, len(examples) // args.via_cli)
        for example in examples[::step][: args.via_cli]:
            reply = cli_answer(args.model, example.question, args.seed)
            in_process = answer(example.messages(), args.seed)
            same = reply["text"] == in_process
            cli_mismatches += not same
            verdict = "ok" if reply["text"].strip() == example.answer else "MISS"
            print(f"  cli [{verdict}{'' if same else ', differs from in-process'}] {example.question!r} -> "
                  f"{reply['text']!r} ({reply.get('finish_reason')})")
        print(f"CLI check: {args.via_cli - cli_mismatches}/{args.via_cli} identical to the in-process answers")
    if args.json:
        print(json.dumps({
            f"turn_{turn}": {s: {"right": r, "total": n, "accuracy": r / n} for s, (r, n) in scores.items()}
            for turn, scores in by_turn.items()
        }))
    return 1 if cli_mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
