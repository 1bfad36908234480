"""Engine overhead: the engine's generation paths against stock `generate()` on the same model.

Three ways to turn the same chat message into a reply, on the same model folder, prompt, seed
and settings, each timed from "here is the message" to "here is the reply text":
- stock: the chat template, `model.generate()` without a streamer, decode;
- engine in-process: `engine.generation.run_generation` (probing sampler and step streamer);
- engine worker: a `Generate` request to `python -m engine serve` over its pipes, with every
  draft (pieces, settled mask, entropy buckets) encoded, written and read back, until `Done`.
The stock and in-process paths run in a second fresh child (`bench.stock_process`) started with the
worker, so both sides are processes of the same age (a scheduler treats a long-busy process
differently). Process start and model load are outside every timing. Rounds interleave the three
paths in a rotating order, so other load on a shared machine falls on all of them alike; CPU time
is reported beside wall time because contention inflates the one and hardly the other.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.diffusion import NEVER_CONFIDENT
from bench.timing import derived, figure

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Write three short sentences about the sea, the sky and a lighthouse."


@dataclass
class OverheadPlan:
    max_new_tokens: int = 64
    steps: int = 8
    canvas_length: int = 16
    seed: int = 1234
    threads: int | None = None
    warmup: int = 2
    runs: int = 7
    device: str = "cpu"


def build_model_folder(folder: Path, canvas_length: int, steps: int) -> Path:
    """The test suite's tiny model, with adaptive stopping off so every run does the same work."""
    sys.path.insert(0, str(REPO_ROOT))  # tests.tiny_model lives in the checkout, not the package
    from tests.tiny_model import build_tiny_model_folder

    build_tiny_model_folder(folder, canvas_length=canvas_length, max_denoising_steps=steps)
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["confidence_threshold"] = NEVER_CONFIDENT
    # generate() stops after the canvas that holds an EOS of its generation config; an id outside
    # the vocabulary is never sampled, so every path runs all canvases: the same work each run.
    # (The engine still reports the reply up to the tokenizer's EOS.)
    config["eos_token_id"] = [json.loads((folder / "config.json").read_text(encoding="utf-8"))["text_config"]["vocab_size"]]
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


class WorkerSession:
    """One `python -m engine serve` child, spoken to exactly as the GUI does."""

    def __init__(self, log_path: Path):
        from engine import protocol

        self.p = protocol
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve"],
            cwd=str(REPO_ROOT),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self.events: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="bench-worker-reader", daemon=True)
        self._reader.start()
        self._next_id = 0

    def _read(self) -> None:
        for line in iter(self.process.stdout.readline, b""):
            try:
                self.events.put((time.perf_counter(), self.p.decode(line, self.p.EVENT_TYPES)))
            except self.p.ProtocolError:
                log.warning("worker wrote a line that is not an event: %r", line[:200])
        self.events.put((time.perf_counter(), None))

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            return "\n".join(Path(self._log.name).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def request_id(self) -> str:
        self._next_id += 1
        return f"bench-{self._next_id}"

    def send(self, message: Any) -> float:
        self.process.stdin.write((self.p.encode(message) + "\n").encode("utf-8"))
        self.process.stdin.flush()
        return time.perf_counter()

    def until(self, request_id: str, final_types: tuple, timeout_s: float) -> tuple[float, Any, int]:
        """Waits for the request's final event; returns (arrival time, event, drafts seen before it)."""
        deadline = time.monotonic() + timeout_s
        drafts = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"worker gave no final event for {request_id} in {timeout_s} s")
            arrived, event = self.events.get(timeout=remaining)
            if event is None:
                raise RuntimeError(f"worker exited (status {self.process.wait()}):\n{self.log_tail()}")
            if getattr(event, "request_id", None) != request_id:
                continue
            if isinstance(event, self.p.Error):
                raise RuntimeError(f"worker error {event.code}: {event.message}\n{event.detail}\n{self.log_tail()}")
            if isinstance(event, self.p.Draft):
                drafts += 1
            if isinstance(event, final_types):
                return arrived, event, drafts

    def start(self, model_folder: Path, device: str, timeout_s: float) -> None:
        p = self.p
        rid = self.request_id()
        self.send(p.Hello(rid, p.PROTOCOL_VERSION, client="bench"))
        self.until(rid, (p.Ready,), timeout_s)
        rid = self.request_id()
        self.send(p.LoadModel(rid, model=str(model_folder), device=device, quantization="none"))
        self.until(rid, (p.ModelLoaded,), timeout_s)

    def generate(self, plan: OverheadPlan, timeout_s: float) -> tuple[float, Any, int]:
        p = self.p
        rid = self.request_id()
        settings = p.GenerationSettings(
            max_new_tokens=plan.max_new_tokens, max_denoising_steps=plan.steps, seed=plan.seed
        )
        request = p.Generate(rid, messages=[p.ChatMessage("user", PROMPT)], settings=settings, reuse_cache=False)
        sent = self.send(request)
        arrived, done, drafts = self.until(rid, (p.Done,), timeout_s)
        return arrived - sent, done, drafts

    def close(self, timeout_s: float = 20.0) -> None:
        try:
            if self.process.poll() is None:
                self.send(self.p.Shutdown(self.request_id()))
                self.process.stdin.close()
            self.process.wait(timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            self._log.close()


@dataclass
class _Samples:
    """Per path: wall seconds, and CPU seconds (contention on a shared machine inflates the first,
    hardly the second)."""

    wall_s: dict[str, list[float]] = field(default_factory=lambda: {"stock": [], "in_process": [], "worker": []})
    cpu_s: dict[str, list[float]] = field(default_factory=lambda: {"stock": [], "in_process": [], "worker": []})
    client_cpu_s: list[float] = field(default_factory=list)  # this process decoding the worker's events
    worker_drafts: list[int] = field(default_factory=list)


def measure(plan: OverheadPlan, workdir: Path | None = None, timeout_s: float = 300.0) -> dict[str, Any]:
    """Times the three paths; returns figures, ratios and whether they produced the same tokens."""
    if workdir is not None:
        return _measure(plan, Path(workdir), timeout_s)
    with tempfile.TemporaryDirectory(prefix="canvas-chat-bench-") as folder:
        return _measure(plan, Path(folder), timeout_s)


class StockSession:
    """`python -m bench.stock_process`: stock generate() and the engine's in-process path, in a fresh child."""

    def __init__(self, folder: Path, plan: OverheadPlan, log_path: Path):
        self._log = open(log_path, "wb")
        settings = {
            "device": plan.device, "prompt": PROMPT, "max_new_tokens": plan.max_new_tokens, "steps": plan.steps,
            "seed": plan.seed, "threads": plan.threads,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.stock_process", str(folder), json.dumps(settings)],
            cwd=str(REPO_ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
        )

    def _answer(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            self._log.flush()
            tail = Path(self._log.name).read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
            raise RuntimeError(f"bench.stock_process exited (status {self.process.wait()}):\n" + "\n".join(tail))
        return json.loads(line)

    def wait_ready(self) -> None:
        self._answer()

    def run(self, name: str) -> dict[str, Any]:
        self.process.stdin.write(f"{name}\n".encode())
        self.process.stdin.flush()
        return self._answer()

    def close(self, timeout_s: float = 20.0) -> None:
        try:
            if self.process.poll() is None:
                self.process.stdin.close()
            self.process.wait(timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            self._log.close()


def _measure(plan: OverheadPlan, workdir: Path, timeout_s: float) -> dict[str, Any]:
    import psutil

    from engine.loading import load_tokenizer

    folder = build_model_folder(workdir / "tiny-diffusiongemma", plan.canvas_length, plan.steps)
    # Both children start together and load while each other imports: same age, same history.
    worker = WorkerSession(workdir / "worker.log")
    reference = StockSession(folder, plan, workdir / "stock.log")
    try:
        worker.start(folder, plan.device, timeout_s)
        reference.wait_ready()
        worker_process = psutil.Process(worker.process.pid)

        def worker_cpu() -> float:
            times = worker_process.cpu_times()
            return times.user + times.system

        samples = _Samples()
        outputs: dict[str, Any] = {}
        order = ["stock", "in_process", "worker"]
        for index in range(plan.warmup + plan.runs):
            for name in order[index % 3 :] + order[: index % 3]:
                if name == "worker":
                    client_before, worker_before = time.process_time(), worker_cpu()
                    wall, done, drafts = worker.generate(plan, timeout_s)
                    cpu, client = worker_cpu() - worker_before, time.process_time() - client_before
                    outputs[name] = (done.token_ids, done.stats)
                else:
                    answer = reference.run(name)
                    wall, cpu = answer["wall_s"], answer["cpu_s"]
                    outputs[name] = answer["token_ids"]
                if index < plan.warmup:
                    continue
                samples.wall_s[name].append(wall)
                samples.cpu_s[name].append(cpu)
                if name == "worker":
                    samples.client_cpu_s.append(client)
                    samples.worker_drafts.append(drafts)
    finally:
        worker.close()
        reference.close()

    tokenizer = load_tokenizer(folder)
    model_config = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    eos_ids = {tokenizer.eos_token_id, *model_config["eos_token_id"]} - {None}
    worker_ids, worker_stats = outputs["worker"]
    same = (
        _until_eos(outputs["stock"], eos_ids)
        == _until_eos(outputs["in_process"], eos_ids)
        == _until_eos(worker_ids, eos_ids)
    )
    ms = lambda seconds: [x * 1000 for x in seconds]  # noqa: E731
    wall = {name: figure(ms(values), "ms") for name, values in samples.wall_s.items()}
    cpu = {name: figure(ms(values), "ms") for name, values in samples.cpu_s.items()}
    wall["worker"]["drafts_received"] = figure([float(d) for d in samples.worker_drafts], "drafts")
    forwards = worker_stats.decoder_forwards
    return {
        "model": "tests.tiny_model (random weights, hidden 64, 2 layers, 4 experts top-2)",
        "device": plan.device,
        "canvas_length": plan.canvas_length,
        "steps_per_canvas": plan.steps,
        "max_new_tokens": plan.max_new_tokens,
        "decoder_forwards": forwards,
        "new_tokens": plan.max_new_tokens,
        "same_tokens_on_all_paths": same,
        "stock_generate_ms": wall["stock"],
        "engine_in_process_ms": wall["in_process"],
        "engine_worker_ms": wall["worker"],
        # Per-round ratios (the paths run back to back in each round); the median is the headline.
        "worker_over_stock": _ratio(samples.wall_s["worker"], samples.wall_s["stock"]),
        "in_process_over_stock": _ratio(samples.wall_s["in_process"], samples.wall_s["stock"]),
        "stock_ms_per_step": wall["stock"]["median"] / forwards,
        # What the worker adds per denoising step, whatever the model's own step costs.
        "worker_added_ms_per_step": derived(
            (wall["worker"]["median"] - wall["stock"]["median"]) / forwards, "ms/step",
            (wall["worker"]["min"] - wall["stock"]["min"]) / forwards,
            (wall["worker"]["p90"] - wall["stock"]["p90"]) / forwards,
            meaning="(worker - stock) / decoder forwards, wall time; low/high from the minimums and p90s",
            signed=True,  # a difference: noise can make it negative
        ),
        "draft_codec": draft_codec_us(),
        # CPU time: what each path costs the processor, little moved by other load on the machine.
        "cpu_time": {
            "stock_generate_ms": cpu["stock"],
            "engine_in_process_ms": cpu["in_process"],
            "engine_worker_ms": cpu["worker"],
            "client_decoding_ms": figure(ms(samples.client_cpu_s), "ms",
                                         meaning="CPU of this process reading the worker's events (the GUI's share)"),
            "worker_over_stock": _ratio(samples.cpu_s["worker"], samples.cpu_s["stock"]),
            "in_process_over_stock": _ratio(samples.cpu_s["in_process"], samples.cpu_s["stock"]),
            "worker_added_ms_per_step": derived(
                (cpu["worker"]["median"] - cpu["stock"]["median"]) / forwards, "ms/step",
                (cpu["worker"]["p10"] - cpu["stock"]["p90"]) / forwards,
                (cpu["worker"]["p90"] - cpu["stock"]["p10"]) / forwards,
                meaning="(worker CPU - stock CPU) / decoder forwards",
                signed=True,
            ),
        },
    }


def draft_codec_us(canvas_lengths: tuple[int, ...] = (16, 256), repeats: int = 200) -> dict[str, Any]:
    """µs to encode one Draft event in the worker and to decode it in the GUI, by canvas length.

    Every denoising step pays the encode (on the worker's writer thread) and, for each draft the
    GUI reads, the decode: the part of the worker's overhead that grows with the canvas.
    """
    from engine import protocol as p

    result: dict[str, Any] = {}
    for length in canvas_lengths:
        draft = p.Draft(
            "bench-1", canvas_index=0, step_index=3, max_steps=48, text="word " * length,
            pieces=[" word"] * length, settled=[index % 3 == 0 for index in range(length)],
            entropy=[index % p.ENTROPY_BUCKETS for index in range(length)],
        )
        line = p.encode(draft)
        encode, decode = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            p.encode(draft)
            middle = time.perf_counter()
            p.decode(line, p.EVENT_TYPES)
            encode.append((middle - start) * 1e6)
            decode.append((time.perf_counter() - middle) * 1e6)
        result[str(length)] = {
            "encode_us": figure(encode, "µs"), "decode_us": figure(decode, "µs"), "line_bytes": len(line),
        }
    return result


def _ratio(numerators: list[float], denominators: list[float]) -> dict[str, Any]:
    """Per-round ratios, with the ratio of medians and of minimums beside them."""
    return figure(
        [n / d for n, d in zip(numerators, denominators)], "ratio",
        ratio_of_medians=sorted(numerators)[len(numerators) // 2] / sorted(denominators)[len(denominators) // 2],
        ratio_of_minimums=min(numerators) / min(denominators),
        target_max=1.10,
    )


def _until_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    """Stock output as the engine reports it: up to and including the first EOS, no pad."""
    for position, token in enumerate(ids):
        if token in eos_ids:
            return list(ids[: position + 1])
    return list(ids)
