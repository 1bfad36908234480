"""A child process that runs the in-process generation paths on request, for engine_overhead.

The worker is a fresh child process; so is this one, started with it and loading the same folder
the same way, so nothing the benchmark process did before (other models, their memory) touches the
stock path. Each call reports its own wall and CPU time; no IPC sits inside the stock timing,
because stock `generate()` has none.

Protocol: one line per request on stdin, "stock" or "in_process"; one JSON line per answer,
{"wall_s", "cpu_s", "token_ids"}. Started as `python -m bench.stock_process FOLDER PLAN_JSON`.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    folder, plan = argv[0], json.loads(argv[1])
    # Our stdout is the answer channel: keep a handle, send fd 1 (stray prints) to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    import torch

    from engine import generation, protocol
    from engine.loading import load_model

    if plan.get("threads"):
        torch.set_num_threads(int(plan["threads"]))
    loaded = load_model(folder, device=plan["device"], quantization="none")
    model, tokenizer = loaded.model, loaded.tokenizer
    messages = [{"role": "user", "content": plan["prompt"]}]
    settings = protocol.GenerationSettings(
        max_new_tokens=plan["max_new_tokens"], max_denoising_steps=plan["steps"], seed=plan["seed"]
    )
    cuda = plan["device"].startswith("cuda")

    def stock() -> list[int]:
        encoded = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        prompt = encoded["input_ids"].to(model.device)
        torch.manual_seed(plan["seed"])
        out = model.generate(
            prompt, max_new_tokens=plan["max_new_tokens"], max_denoising_steps=plan["steps"],
            return_dict_in_generate=False,
        )
        new = out[0, prompt.shape[1] :].tolist()
        tokenizer.decode(new, skip_special_tokens=True)
        return new

    def in_process() -> list[int]:
        ids = generation.encode_prompt(tokenizer, messages)
        result = generation.run_generation(model, tokenizer, ids, settings)
        tokenizer.decode(result.token_ids, skip_special_tokens=True)
        return result.token_ids

    paths = {"stock": stock, "in_process": in_process}
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    for line in sys.stdin:
        name = line.strip()
        if name not in paths:
            break
        if cuda:
            torch.cuda.synchronize()
        cpu, wall = time.process_time(), time.perf_counter()
        token_ids = paths[name]()
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        answers.write(json.dumps({"wall_s": wall, "cpu_s": cpu, "token_ids": token_ids}) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
