"""The worker's event writer over a slow stdout: superseded drafts are dropped (latest wins per
request and canvas), every other event is written, in order."""

from __future__ import annotations

import threading

from engine import protocol as p
from engine.worker import EventChannel


class SlowStream:
    """A stdout whose first write blocks until released, so events pile up behind it."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.first_write_started = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> None:
        self.first_write_started.set()
        self.release.wait(30)
        self.lines.append(text)

    def flush(self) -> None:
        pass


def _draft(request_id: str, canvas: int, step: int) -> p.Draft:
    return p.Draft(request_id, canvas_index=canvas, step_index=step, max_steps=8, text=f"{canvas}.{step}",
                   pieces=[], settled=[], entropy=[])


def _written(stream: SlowStream) -> list[tuple]:
    events = [p.decode(line, p.EVENT_TYPES) for line in "".join(stream.lines).splitlines()]
    return [(type(e).__name__, e.request_id, getattr(e, "canvas_index", None), getattr(e, "step_index", None))
            for e in events]


def test_a_slow_reader_gets_the_latest_draft_and_every_commit_done_and_error():
    stream = SlowStream()
    channel = EventChannel(stream)
    try:
        channel.send(_draft("a", 0, 0))
        assert stream.first_write_started.wait(30)  # the writer is stuck on the first draft
        for step in (1, 2, 3):
            channel.send(_draft("a", 0, step))
        channel.send(p.CanvasCommitted("a", canvas_index=0, text="x", reply_text="x", token_count=1, steps=4))
        channel.send(_draft("a", 1, 0))
        channel.send(_draft("b", 0, 0))  # another request's draft never replaces this one's
        channel.send(_draft("a", 1, 1))
        channel.send(_draft("a", 1, 2))
        channel.send(p.Done("a", "cancelled", "x", [5], p.GenerationStats(0.1, 0.2, 1, 5.0, 6, 0.17, 3.0, 2, 9, 0)))
        channel.send(p.Error("b", "internal", "boom", True))
        channel.send(_draft("b", 0, 1))
    finally:
        stream.release.set()
        channel.close()
    assert _written(stream) == [
        ("Draft", "a", 0, 0),
        ("Draft", "a", 0, 3),  # steps 1 and 2 were superseded before they could be written
        ("CanvasCommitted", "a", 0, None),
        ("Draft", "a", 1, 0),
        ("Draft", "b", 0, 0),
        ("Draft", "a", 1, 2),
        ("Done", "a", None, None),
        ("Error", "b", None, None),
        ("Draft", "b", 0, 1),
    ]


def test_a_draft_never_replaces_a_pending_commit_or_done():
    stream = SlowStream()
    channel = EventChannel(stream)
    try:
        channel.send(_draft("a", 0, 0))
        assert stream.first_write_started.wait(30)
        channel.send(p.CanvasCommitted("a", canvas_index=0, text="x", reply_text="x", token_count=1, steps=1))
        channel.send(_draft("a", 0, 5))  # same request and canvas as the commit before it
        channel.send(p.Done("a", "eos", "x", [5], p.GenerationStats(0.1, 0.2, 1, 5.0, 1, 1.0, 1.0, 1, 9, 0)))
        channel.send(_draft("a", 0, 6))
    finally:
        stream.release.set()
        channel.close()
    kinds = [kind for kind, *_ in _written(stream)]
    assert kinds == ["Draft", "CanvasCommitted", "Draft", "Done", "Draft"]
