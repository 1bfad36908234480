"""`python -m engine api`: the local OpenAI-compatible server without the GUI.

Loads the model, then runs the worker's engine loop with only the HTTP side feeding it;
prints the base URL when ready; Ctrl+C stops it cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys

from engine import protocol as p
from engine.api.server import DEFAULT_PORT, BindRefused, check_bind

log = logging.getLogger("canvas_chat.engine.api")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine api", description=__doc__)
    parser.add_argument("--model", required=True, help="a model folder or a downloaded hub id")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this PC only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument(
        "--token",
        default=os.environ.get("CANVAS_CHAT_API_TOKEN", ""),
        help="require 'Authorization: Bearer TOKEN' (default: $CANVAS_CHAT_API_TOKEN); needed for a non-loopback --host",
    )
    parser.add_argument("--cors-origin", action="append", default=[], help="allow browser pages from this origin (repeatable)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quantization", choices=["auto", "none", "bf16", "nf4", "nf4-double"], default="auto")
    return parser


def api_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("CANVAS_CHAT_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        check_bind(args.host, args.token)  # before minutes of loading, not after
    except BindRefused as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    from engine.worker import CancelRegistry, Engine

    failures: list[p.Error] = []

    def emit(event) -> None:
        if isinstance(event, p.Error):
            failures.append(event)
        elif isinstance(event, p.LoadProgress):
            log.info("%s", event.message)
        elif isinstance(event, p.ApiRequestLogged):
            print(
                f"{event.method} {event.path} {event.status} {event.completion_tokens} tokens "
                f"{event.tokens_per_s:.1f} tok/s {event.wall_s:.2f}s",
                file=sys.stderr,
                flush=True,
            )

    cancels = CancelRegistry()
    requests: queue.Queue = queue.Queue()
    engine = Engine(emit, cancels)
    engine.submit = requests.put
    try:
        engine.handle(p.LoadModel("load", args.model, device=args.device, quantization=args.quantization))
        if not failures:
            engine.handle(p.StartApiServer("api", args.host, args.port, args.token, list(args.cors_origin)))
        if failures:
            print(f"error: {failures[0].message}", file=sys.stderr)
            return 1
        print(f"Canvas Chat API ready: {engine.api_server.base_url}", flush=True)
        while True:
            try:
                job = requests.get(timeout=0.5)  # a bounded wait keeps Ctrl+C prompt on every platform
            except queue.Empty:
                continue
            engine.handle(job)
    except KeyboardInterrupt:
        # A second Ctrl+C (or a terminal that signals twice) must not abort the shutdown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("stopping", file=sys.stderr, flush=True)
        cancels.everything.set()
        return 0
    finally:
        engine.stop_api_server()


def main(argv: list[str]) -> int:
    status = api_main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    # Skip interpreter teardown, as the worker does: torch's threads can delay a clean exit by seconds.
    os._exit(status)
