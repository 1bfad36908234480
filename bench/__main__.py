"""`python -m bench run --suite cpu|gpu [--size small|full] --out results.json [--chart results.png]`;
`python -m bench profile-forward [--json] [--experts NAME] [--step engine|stock]`."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path


def _finite(value):
    """JSON has no NaN/inf: a figure that is not finite is a bug, written as null so it shows."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a benchmark suite")
    run.add_argument("--suite", choices=("cpu", "gpu"), required=True)
    run.add_argument("--size", choices=("small", "full"), default=None,
                     help="tiny configs (default for --suite cpu) or the full 26B-A4B architecture (default for gpu)")
    run.add_argument("--out", type=Path, required=True, help="results JSON")
    run.add_argument("--chart", type=Path, default=None, help="PNG chart (default: --out with .png)")
    run.add_argument("--no-overhead", action="store_true", help="skip the engine-overhead comparison")
    run.add_argument("--dtypes", default=None, help="comma list, e.g. bf16,nf4 (default: the suite's own)")
    run.add_argument("--threads", type=int, default=None,
                     help="torch threads in this process and the worker (cpu suite default: 1, steadier on a shared machine)")
    prof = commands.add_parser("profile-forward", help="ops, host syncs and temporaries per decoder forward and step")
    prof.add_argument("--json", action="store_true", help="one JSON object on stdout")
    prof.add_argument("--experts", default="canvas_nf4",
                      help="experts implementation registered in transformers' ExpertsInterface (default: canvas_nf4)")
    prof.add_argument("--step", choices=("engine", "stock"), default="engine",
                      help="engine: engine.generation.denoise_step; stock: transformers' _denoising_step and its read-backs")
    prof.add_argument("--hidden-size", type=int, default=64)
    prof.add_argument("--vocab", type=int, default=None, help="default: the real 262,144")
    prof.add_argument("--canvas", type=int, default=None, help="default: the real 256")
    prof.add_argument("--experts-count", type=int, default=None, help="default: the real 128")
    prof.add_argument("--top-k", type=int, default=None, help="default: the real 8")
    prof.add_argument("--prompt-tokens", type=int, default=64)
    prof.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="the model's compute dtype (a GPU runs bfloat16: its norms' up/down casts are real copies)")
    prof.add_argument("--run-kernels", action="store_true",
                      help="run the engine's Triton kernels too (on a CPU needs TRITON_INTERPRET=1; slow at real size); "
                           "by default each launch is counted as one op without running it")
    table = commands.add_parser("table", help="Markdown tables of a results JSON (for bench/README.md)")
    table.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    if args.command == "table":
        from bench.report import figures_table, gpu_rows

        results = json.loads(args.results.read_text(encoding="utf-8"))
        print(figures_table(results) + "\n\n" + gpu_rows(results))
        return 0

    if args.command == "profile-forward":
        from bench.profile_forward import profile, render

        torch_threads = __import__("os").environ.get("OMP_NUM_THREADS")
        result = profile(hidden_size=args.hidden_size, vocab_size=args.vocab, canvas_length=args.canvas,
                         prompt_tokens=args.prompt_tokens, experts=args.experts, step=args.step,
                         num_experts=args.experts_count, top_k=args.top_k, dtype=args.dtype,
                         run_kernels=args.run_kernels)
        result["command"] = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
        result["omp_num_threads"] = torch_threads
        print(json.dumps(_finite(result), indent=2) if args.json else render(result))
        return 0

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    size = args.size or ("small" if args.suite == "cpu" else "full")
    threads = args.threads if args.threads is not None else (1 if args.suite == "cpu" else None)
    if threads:
        import os

        # The worker child inherits these; torch reads them when it starts.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)

    from bench import suite
    from bench.chart import HOW_TO_GET_CHARTS, can_draw, draw

    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    chart = args.chart or args.out.with_suffix(".png")
    drawing = can_draw()
    if not drawing:
        logging.getLogger("bench").warning("%s; the results JSON is written all the same", HOW_TO_GET_CHARTS)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(results: dict, complete: bool) -> None:
        results = {**results, "command": command, "complete": complete}
        args.out.write_text(json.dumps(_finite(results), indent=2) + "\n", encoding="utf-8")
        if drawing and results.get("dtypes"):
            draw(results, chart)

    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip()) if args.dtypes else None
    results = suite.run(
        args.suite, size, overhead=not args.no_overhead, threads=threads, dtypes=dtypes,
        on_progress=lambda partial: write(partial, complete=False),
    )
    write(results, complete=True)
    if drawing:
        print(f"wrote {args.out} and {chart}", file=sys.stderr)
    else:
        print(f"wrote {args.out}; {HOW_TO_GET_CHARTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
