"""Exact-match accuracy of the demo model per skill on the held-out questions.

    python -m engine.demo.evaluate --model resources/demo-model --seed 0 [--via-cli 12]

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

from engine.demo.corpus import SKILLS, Example, held_out_examples

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "resources" / "demo-model"


class EngineAnswerer:
    """Answers through `python -m engine generate`'s own code, with the model loaded once."""

    name = "engine.cli.generate_once (in-process)"

    def __init__(self, model_dir: Path):
        from engine.loading import load_model

        # The CLI's defaults: --device auto --quantization auto.
        self.loaded = load_model(str(model_dir), device="auto", quantization="auto")

    def __call__(self, question: str, seed: int) -> str:
        from engine.cli import generate_once
        from engine.protocol import GenerationSettings

        return generate_once(self.loaded, question, GenerationSettings(seed=seed))["text"]


class StockAnswerer:
    """Stock `generate()` with the folder's generation config: the engine's reference."""

    name = "stock generate()"

    def __init__(self, model_dir: Path):
        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def __call__(self, question: str, seed: int) -> str:
        import torch

        encoded = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=True
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
        text = answer(example.question, seed).strip()
        ok = text == example.answer
        scores[example.skill][0] += ok
        scores[example.skill][1] += 1
        if not ok and show_errors:
            print(f"  MISS [{example.skill}] {example.question!r}: got {text!r}, want {example.answer!r}")
    return {skill: tuple(v) for skill, v in scores.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skills", default=",".join(SKILLS))
    parser.add_argument("--backend", choices=("auto", "engine", "stock"), default="auto")
    parser.add_argument("--via-cli", type=int, default=0, metavar="N",
                        help="also check N questions through `python -m engine generate` subprocesses")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    wanted = set(args.skills.split(","))
    examples = [e for e in held_out_examples() if e.skill in wanted]
    answer = make_answerer(args.model, args.backend)
    started = time.perf_counter()
    scores = evaluate(answer, examples, args.seed)
    per_question_ms = 1000 * (time.perf_counter() - started) / max(1, len(examples))
    total_right = sum(r for r, _ in scores.values())
    print(f"held-out exact match via {answer.name}, seed {args.seed}, {args.model}:")
    for skill in SKILLS:
        if skill in scores:
            right, n = scores[skill]
            print(f"  {skill:<9} {right:>3}/{n:<3} {100 * right / n:6.1f}%")
    print(f"  {'all':<9} {total_right:>3}/{len(examples):<3} {100 * total_right / len(examples):6.1f}%"
          f"   ({per_question_ms:.0f} ms per question)")

    cli_mismatches = 0
    if args.via_cli:
        step = max(1, len(examples) // args.via_cli)
        for example in examples[::step][: args.via_cli]:
            reply = cli_answer(args.model, example.question, args.seed)
            in_process = answer(example.question, args.seed)
            same = reply["text"] == in_process
            cli_mismatches += not same
            verdict = "ok" if reply["text"].strip() == example.answer else "MISS"
            print(f"  cli [{verdict}{'' if same else ', differs from in-process'}] {example.question!r} -> "
                  f"{reply['text']!r} ({reply.get('finish_reason')})")
        print(f"CLI check: {args.via_cli - cli_mismatches}/{args.via_cli} identical to the in-process answers")
    if args.json:
        print(json.dumps({s: {"right": r, "total": n, "accuracy": r / n} for s, (r, n) in scores.items()}))
    return 1 if cli_mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
