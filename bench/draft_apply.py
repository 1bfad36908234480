"""How long the transcript takes to show one 256-token draft, and how late the event loop runs
while a canvas animates (target: at most 4 ms per draft).

    python bench/draft_apply.py [--drafts 300] [--platform offscreen]

A draft goes the way the app sends it: `Transcript.update(draft=...)` → the list model's
dataChanged → the view lays the canvas out → the row repaints (processEvents until painted).
The latency probe is a 1 ms timer whose lateness is measured while drafts arrive at 60/s and the
fade timer runs.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CANVAS = 256
STEPS = 24
WORDS = (
    "the model writes a block of text at a time and every block starts as noise that is denoised "
    "in parallel over a few steps until the tokens settle into words you can read while you watch"
).split()


def make_drafts(canvas_index: int, seed: int) -> list:
    """One canvas's drafts: positions settle over STEPS steps in a shuffled order."""
    from app.chat.messages import DraftState

    rng = random.Random(seed)
    pieces = tuple((" " if i % 5 else "\n" if i % 40 == 0 else " ") + rng.choice(WORDS) for i in range(CANVAS))
    order = list(range(CANVAS))
    rng.shuffle(order)
    drafts = []
    for step in range(STEPS):
        revealed = set(order[: (step + 1) * CANVAS // STEPS])
        noisy = tuple(p if i in revealed else rng.choice(WORDS) for i, p in enumerate(pieces))
        drafts.append(
            DraftState(
                canvas_index=canvas_index,
                step_index=step,
                max_steps=STEPS,
                pieces=noisy,
                settled=tuple(i in revealed for i in range(CANVAS)),
                entropy=tuple(rng.choice((0, 0, 0, 1, 2, 3)) for _ in range(CANVAS)),
                text="".join(noisy),
            )
        )
    return drafts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drafts", type=int, default=240)
    parser.add_argument("--platform", default=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    args = parser.parse_args()
    os.environ["QT_QPA_PLATFORM"] = args.platform

    import app.qt_compat  # noqa: F401
    from PySide6.QtCore import QCoreApplication, QElapsedTimer, QTimer
    from PySide6.QtWidgets import QApplication

    from app.chat.messages import Message, Transcript
    from app.chat.qt_models import TranscriptListModel
    from app.transcript.view import TranscriptView

    qt_app = QApplication(sys.argv[:1])
    history = []
    for turn in range(6):
        history.append(Message("user", f"Question {turn}: how does block diffusion write text?"))
        history.append(
            Message(
                "assistant",
                "Some **Markdown** with `code` and a list:\n\n- one\n- two\n\n```python\nprint('hello')\n```\n" * 2,
                stats={"time_to_first_draft_s": 0.2, "tokens_per_s": 40.0, "tokens_per_forward": 5.0, "steps_per_canvas": 9.0},
            )
        )
    streaming = Message("assistant", "The committed first canvas of this reply. " * 12, status="streaming")
    transcript = Transcript("bench", history + [streaming])
    model = TranscriptListModel(transcript)
    view = TranscriptView()
    view.setModel(model)
    view.resize(1000, 800)
    view.show()
    QCoreApplication.processEvents()
    view.scroll_to_end()

    drafts = []
    canvas = 1
    while len(drafts) < args.drafts:
        drafts.extend(make_drafts(canvas, seed=canvas))
        canvas += 1
    drafts = drafts[: args.drafts]

    # 1. Apply + paint, one draft at a time.
    paints = view.delegate.paint_counts
    apply_ms = []
    for draft in drafts:
        painted_before = paints[streaming.id]
        start = time.perf_counter()
        transcript.update(streaming.id, draft=draft)
        deadline = start + 1.0
        while paints[streaming.id] == painted_before and time.perf_counter() < deadline:
            QCoreApplication.processEvents()
        apply_ms.append((time.perf_counter() - start) * 1000)
    layout_ms = []
    row = view.animated_row(streaming.id)
    width = view.delegate.content_width("assistant", view.viewport().width())
    for _ in range(50):
        row.layout_key = ()
        start = time.perf_counter()
        view.delegate.canvas_layout(row, width, time.monotonic())
        layout_ms.append((time.perf_counter() - start) * 1000)

    # 2. Event-loop lateness while drafts arrive at 60/s and tokens fade in.
    lateness_ms: list[float] = []
    probe_clock = QElapsedTimer()
    probe = QTimer()
    probe.setInterval(1)
    last = [0.0]

    def on_probe() -> None:
        now = probe_clock.nsecsElapsed() / 1e6
        if last[0]:
            lateness_ms.append(max(0.0, now - last[0] - 1.0))
        last[0] = now

    probe.timeout.connect(on_probe)
    feed = QTimer()
    feed.setInterval(16)
    remaining = list(make_drafts(canvas, seed=99)) * 6
    fade_active = []

    def on_feed() -> None:
        if not remaining:
            feed.stop()
            QTimer.singleShot(400, qt_app.quit)
            return
        transcript.update(streaming.id, draft=remaining.pop(0))
        fade_active.append(view.frame_timer_active())

    feed.timeout.connect(on_feed)
    probe_clock.start()
    probe.start()
    feed.start()
    qt_app.exec()
    probe.stop()

    def summary(values: list[float]) -> str:
        ordered = sorted(values)
        p95 = ordered[int(len(ordered) * 0.95) - 1]
        return f"median {statistics.median(ordered):.2f} ms, p95 {p95:.2f} ms, max {ordered[-1]:.2f} ms"

    print(f"platform: {args.platform}, {CANVAS}-token canvas, {len(drafts)} drafts, window 1000x800, 13 rows")
    print(f"apply one draft (model update -> layout -> row painted): {summary(apply_ms)}")
    print(f"  of which canvas layout alone: {summary(layout_ms)}")
    print(f"event-loop lateness while animating at 60 drafts/s: {summary(lateness_ms)} over {len(lateness_ms)} ticks")
    print(f"fade timer running during the feed: {sum(fade_active)}/{len(fade_active)} drafts")
    target_ok = statistics.median(apply_ms) <= 4.0
    print(f"target <= 4 ms per draft: {'met' if target_ok else 'NOT met'}")
    view.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
