"""Generation through the real worker process with `LoadModel(quantization="nf4")`."""

from __future__ import annotations

import subprocess
import threading

import pytest

from engine import protocol as p
from tests.conftest import PYTHON, REPO_ROOT, TIMEOUT_SCALE, python_env


class WorkerSession:
    def __init__(self):
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "engine", "serve"], cwd=REPO_ROOT, env=python_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        )
        self.stderr: list[str] = []
        self._drain = threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True)
        self._drain.start()

    def send(self, message) -> None:
        self.proc.stdin.write(p.encode(message) + "\n")
        self.proc.stdin.flush()

    def events_until(self, request_id: str, *final_types: type, timeout: float):
        events = []
        timer = threading.Timer(timeout * TIMEOUT_SCALE, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                event = p.decode(line, p.EVENT_TYPES)
                events.append(event)
                if event.request_id == request_id and isinstance(event, (*final_types, p.Error)):
                    return events
        finally:
            timer.cancel()
        pytest.fail("worker stopped early:\n" + "".join(self.stderr[-30:]))

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30 * TIMEOUT_SCALE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc.stderr.close()


@pytest.mark.slow
def test_generation_through_the_worker_with_nf4(tiny_model_dir, isolated_home):
    worker = WorkerSession()
    try:
        worker.send(p.Hello("h", p.PROTOCOL_VERSION, "test"))
        worker.events_until("h", p.Ready, timeout=60)
        worker.send(p.LoadModel("load", model=str(tiny_model_dir), device="cpu", quantization="nf4"))
        events = worker.events_until("load", p.ModelLoaded, timeout=180)
        assert isinstance(events[-1], p.ModelLoaded), events[-1]
        assert events[-1].quantization == "nf4"
        progress = [e for e in events if isinstance(e, p.LoadProgress)]
        assert any(e.layers_total > 0 and e.layers_quantized == e.layers_total for e in progress)
        assert any(e.bytes_total > 0 and e.bytes_read == e.bytes_total for e in progress)
        assert (isolated_home / "models" / f"{tiny_model_dir.name}-nf4" / "canvas_quantized.json").is_file()

        messages = [p.ChatMessage("user", "What is the capital of France?")]
        worker.send(p.Generate("g1", messages, settings=p.GenerationSettings(max_new_tokens=32, seed=1)))
        events = worker.events_until("g1", p.Done, timeout=180)
        done = events[-1]
        assert isinstance(done, p.Done), done
        assert done.finish_reason in ("eos", "length")
        assert done.stats.decoder_forwards > 0
        assert any(isinstance(e, p.Draft) for e in events)

        # A second load reads the quantized copy instead of quantizing again.
        worker.send(p.LoadModel("load2", model=str(tiny_model_dir), device="cpu", quantization="nf4"))
        events = worker.events_until("load2", p.ModelLoaded, timeout=180)
        assert isinstance(events[-1], p.ModelLoaded), events[-1]
        assert any("quantized copy" in e.message for e in events if isinstance(e, p.LoadProgress))
        worker.send(p.Generate("g2", messages, settings=p.GenerationSettings(max_new_tokens=32, seed=1)))
        again = worker.events_until("g2", p.Done, timeout=180)[-1]
        assert isinstance(again, p.Done) and again.token_ids == done.token_ids
    finally:
        worker.close()
