"""Command line of the engine: `python -m engine serve|generate|rewrite|api|plan|hardware`."""

from __future__ import annotations

import importlib
import sys

# Each subcommand lives in its own module, imported only when used: `serve` must not pay for
# the planner, and `plan` must not import torch.
SUBCOMMANDS = {
    "serve": ("engine.worker", "main", "run the worker process (JSON lines on stdin/stdout)"),
    "generate": ("engine.cli", "generate_main", "one-shot headless generation"),
    "rewrite": ("engine.cli", "rewrite_main", "re-denoise a character span of a reply in place"),
    "api": ("engine.api.headless", "main", "local OpenAI-compatible server (docs/api.md)"),
    "plan": ("engine.planner", "cli_main", "will a model fit this GPU? (memory planner)"),
    "hardware": ("engine.hardware", "cli_main", "what this PC has: GPU, VRAM, RAM, disk"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: python -m engine {" + ",".join(SUBCOMMANDS) + "} [options]\n", file=sys.stderr)
        for name, (_, _, help_text) in SUBCOMMANDS.items():
            print(f"  {name:<10} {help_text}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module_name, function_name, _ = SUBCOMMANDS[argv[0]]
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
