"""Replay: draft events recorded as diffs come back as the same full frames, compactly."""

from __future__ import annotations

import random

import pytest

from app.chat.replay import FRAME_INTERVAL_S, ReplayError, ReplayPlayer, ReplayRecorder, decode_frames, size_report
from engine.protocol import CanvasCommitted, Draft

CANVAS = 256
STEPS = 48


def _reply_events(canvases: int = 2, seed: int = 0):
    """A plausible denoising run: positions settle step by step, entropy falls."""
    rng = random.Random(seed)
    words = ["the", " canvas", " noise", " token", " settles", " into", " text", ".", " and", " a"]
    events = []
    committed = ""
    for canvas in range(canvases):
        final = [rng.choice(words) for _ in range(CANVAS)]
        settled_at = [rng.randrange(STEPS) for _ in range(CANVAS)]
        for step in range(STEPS):
            pieces = [final[i] if settled_at[i] <= step else rng.choice(words) for i in range(CANVAS)]
            settled = [settled_at[i] <= step for i in range(CANVAS)]
            entropy = [0 if settled[i] else min(3, (settled_at[i] - step) // 4) for i in range(CANVAS)]
            events.append(Draft("r", canvas, step, STEPS, "".join(pieces), pieces, settled, entropy))
        text = "".join(final)
        committed += text
        events.append(CanvasCommitted("r", canvas, text, committed, CANVAS, STEPS))
    return events


def _record(events):
    recorder = ReplayRecorder()
    for event in events:
        if isinstance(event, Draft):
            recorder.record_draft(event)
        else:
            recorder.record_commit(event)
    return recorder.finish()


def test_round_trip_rebuilds_every_frame():
    events = _reply_events()
    frames = list(decode_frames(_record(events)))
    assert len(frames) == len(events)
    committed = ""
    for event, frame in zip(events, frames):
        if isinstance(event, Draft):
            assert frame.kind == "draft"
            assert (frame.canvas_index, frame.step_index, frame.max_steps) == (event.canvas_index, event.step_index, STEPS)
            assert list(frame.pieces) == event.pieces
            assert list(frame.settled) == event.settled
            assert list(frame.entropy) == event.entropy
            assert frame.committed_text == committed
            assert frame.draft_state().pieces == tuple(event.pieces)
        else:
            committed = event.reply_text
            assert frame.kind == "commit" and frame.committed_text == committed
            assert frame.draft_state() is None


def test_shrinking_and_growing_canvas_drafts():
    recorder = ReplayRecorder()
    recorder.record_draft(Draft("r", 0, 0, 4, "abc", ["a", "b", "c"], [False, True, False], [3, 0, 2]))
    recorder.record_draft(Draft("r", 0, 1, 4, "a", ["a"], [True], [0]))  # an EOS appeared early
    recorder.record_draft(Draft("r", 0, 2, 4, "axyz", ["a", "x", "y", "z"], [True, False, False, True], [0, 1, 1, 0]))
    frames = list(decode_frames(recorder.finish()))
    assert [f.pieces for f in frames] == [("a", "b", "c"), ("a",), ("a", "x", "y", "z")]
    assert frames[2].settled == (True, False, False, True)


def test_recording_is_compact():
    blob = _record(_reply_events(canvases=2))
    report = size_report(blob)
    assert report["frames"] == 2 * (STEPS + 1)
    # Two 256-token canvases at 48 steps: full frames would be ~2 x 48 x 256 x ~12 bytes (~300 kB).
    assert report["stored_bytes"] < 60_000, report


def test_player_paces_frames_by_speed():
    blob = _record(_reply_events(canvases=1))
    normal = ReplayPlayer(blob, speed=1.0)
    fast = ReplayPlayer(blob, speed=4.0)
    delays = [delay for delay, _ in normal.timeline()]
    assert delays[0] == 0 and delays[1] == pytest.approx(FRAME_INTERVAL_S)
    assert fast.duration_s == pytest.approx(normal.duration_s / 4)
    assert normal.frame_at(0).step_index == 0
    assert normal.frame_at(10 * normal.duration_s).kind == "commit"
    with pytest.raises(ValueError):
        ReplayPlayer(blob, speed=0)


@pytest.mark.parametrize("blob", [b"", b"not zlib", __import__("zlib").compress(b'{"v": 99, "frames": []}')])
def test_unreadable_blob_raises_replay_error(blob):
    with pytest.raises(ReplayError):
        ReplayPlayer(blob)
