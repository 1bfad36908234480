"""Replay of a reply's denoising: a compact recording of its draft events and a frame player.

`ReplayRecorder` stores, per draft, only the positions that changed since the previous draft of
the same canvas (piece, settled, entropy bucket), plus every committed canvas; `finish()` packs
that as zlib-compressed JSON for the message's replay blob. `ReplayPlayer` rebuilds full frames
and paces them at a chosen speed (the Qt timer that shows them lives in the view).
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

from app.chat.messages import DraftState

FORMAT_VERSION = 1
FRAME_INTERVAL_S = 1 / 30  # at speed 1.0 one draft step is shown for 1/30 s
COMMIT_HOLD_FRAMES = 6  # a committed canvas stays on screen a little longer
_DRAFT, _COMMIT = 0, 1


class ReplayError(ValueError):
    """A replay blob that cannot be read."""


@dataclass(frozen=True)
class ReplayFrame:
    """The reply as it looked at one recorded moment."""

    kind: str  # "draft" | "commit"
    canvas_index: int
    step_index: int
    max_steps: int
    committed_text: str  # all canvases committed before (draft) or up to (commit) this frame
    pieces: tuple[str, ...]  # the open canvas (empty for a commit frame)
    settled: tuple[bool, ...]
    entropy: tuple[int, ...]
    elapsed_s: float  # when it happened during the original generation

    def draft_state(self) -> DraftState | None:
        """The open canvas as `Message.draft` holds it (None for a commit frame)."""
        if self.kind != "draft":
            return None
        return DraftState(
            canvas_index=self.canvas_index,
            step_index=self.step_index,
            max_steps=self.max_steps,
            pieces=self.pieces,
            settled=self.settled,
            entropy=self.entropy,
            text="".join(self.pieces),
        )


class ReplayRecorder:
    """Collects a reply's draft and commit events; `finish()` returns the replay blob."""

    def __init__(self) -> None:
        self._frames: list[list[Any]] = []
        self._start: float | None = None
        self._canvas = -1
        self._previous: list[tuple[str, bool, int]] = []
        self.draft_count = 0

    def _elapsed_ms(self) -> int:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        return int((now - self._start) * 1000)

    def record_draft(self, draft: Any) -> None:
        """Records an `engine.protocol.Draft` (or a `DraftState`)."""
        if draft.canvas_index != self._canvas:
            self._canvas = draft.canvas_index
            self._previous = []
        current = list(zip(draft.pieces, (bool(s) for s in draft.settled), draft.entropy))
        changes = [
            [i, piece, int(settled), entropy]
            for i, (piece, settled, entropy) in enumerate(current)
            if i >= len(self._previous) or self._previous[i] != (piece, settled, entropy)
        ]
        self._frames.append(
            [_DRAFT, self._elapsed_ms(), draft.canvas_index, draft.step_index, draft.max_steps, len(current), changes]
        )
        self._previous = current
        self.draft_count += 1

    def record_commit(self, commit: Any) -> None:
        """Records an `engine.protocol.CanvasCommitted`."""
        self._frames.append([_COMMIT, self._elapsed_ms(), commit.canvas_index, commit.steps, commit.reply_text])
        self._canvas = -1
        self._previous = []

    def finish(self) -> bytes:
        payload = {"v": FORMAT_VERSION, "frames": self._frames}
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return zlib.compress(text.encode("utf-8"), 9)

    @property
    def frame_count(self) -> int:
        return len(self._frames)


def decode_frames(blob: bytes) -> Iterator[ReplayFrame]:
    """Full frames, in order, from a replay blob."""
    try:
        payload = json.loads(zlib.decompress(blob).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReplayError(f"unreadable replay: {exc}") from None
    if not isinstance(payload, dict) or payload.get("v") != FORMAT_VERSION:
        raise ReplayError(f"unknown replay format {payload.get('v') if isinstance(payload, dict) else payload!r}")
    committed = ""
    pieces: list[str] = []
    settled: list[bool] = []
    entropy: list[int] = []
    canvas = -1
    try:
        for frame in payload["frames"]:
            if frame[0] == _DRAFT:
                _, elapsed_ms, canvas_index, step_index, max_steps, length, changes = frame
                if canvas_index != canvas:
                    canvas, pieces, settled, entropy = canvas_index, [], [], []
                del pieces[length:], settled[length:], entropy[length:]
                while len(pieces) < length:
                    pieces.append("")
                    settled.append(False)
                    entropy.append(0)
                for i, piece, is_settled, bucket in changes:
                    pieces[i], settled[i], entropy[i] = piece, bool(is_settled), bucket
                yield ReplayFrame(
                    "draft", canvas_index, step_index, max_steps, committed,
                    tuple(pieces), tuple(settled), tuple(entropy), elapsed_ms / 1000,
                )
            elif frame[0] == _COMMIT:
                _, elapsed_ms, canvas_index, steps, reply_text = frame
                committed = reply_text
                canvas, pieces, settled, entropy = -1, [], [], []
                yield ReplayFrame("commit", canvas_index, steps, steps, committed, (), (), (), elapsed_ms / 1000)
            else:
                raise ReplayError(f"unknown frame kind {frame[0]!r}")
    except (TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, ReplayError):
            raise
        raise ReplayError(f"bad replay frame: {exc}") from None


class ReplayPlayer:
    """Paces a recorded reply: `timeline()` yields (delay before the frame in seconds, frame).

    At speed 1.0 each draft step shows for FRAME_INTERVAL_S; 2.0 is twice as fast. A view
    drives it with one single-shot QTimer per frame, or calls `frame_at(t)` from its own timer.
    """

    def __init__(self, blob: bytes, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.frames: list[ReplayFrame] = list(decode_frames(blob))
        self.speed = speed

    def __len__(self) -> int:
        return len(self.frames)

    def _hold_s(self, frame: ReplayFrame) -> float:
        frames = COMMIT_HOLD_FRAMES if frame.kind == "commit" else 1
        return frames * FRAME_INTERVAL_S / self.speed

    def timeline(self) -> Iterator[tuple[float, ReplayFrame]]:
        delay = 0.0
        for frame in self.frames:
            yield delay, frame
            delay = self._hold_s(frame)

    @property
    def duration_s(self) -> float:
        return sum(self._hold_s(frame) for frame in self.frames)

    def hold_s(self, index: int) -> float:
        """How long frame `index` stays on screen at this speed."""
        return self._hold_s(self.frames[index])

    def index_of(self, canvas_index: int, step_index: int) -> int:
        """The frame of draft `step_index` of canvas `canvas_index` (ValueError when not recorded)."""
        for index, frame in enumerate(self.frames):
            if frame.kind == "draft" and (frame.canvas_index, frame.step_index) == (canvas_index, step_index):
                return index
        raise ValueError(f"no recorded draft for step {step_index} of canvas {canvas_index}")

    def frame_at(self, t: float) -> ReplayFrame | None:
        """The frame on screen `t` seconds into playback (the last one after the end)."""
        if not self.frames:
            return None
        elapsed = 0.0
        for frame in self.frames:
            elapsed += self._hold_s(frame)
            if t < elapsed:
                return frame
        return self.frames[-1]


def size_report(blob: bytes) -> dict[str, int]:
    """Bytes stored vs. the JSON it expands to, and the number of frames (for docs/benchmarks)."""
    raw = zlib.decompress(blob)
    frames = json.loads(raw)["frames"]
    return {"stored_bytes": len(blob), "json_bytes": len(raw), "frames": len(frames)}
