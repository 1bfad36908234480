"""The download child's messages: one JSON object per line on its stdout, in the protocol's wire format.

The child (`app.setup.download_child`) writes these with `engine.protocol.encode`; the supervisor
(`app.setup.download`) reads them with `engine.protocol.decode(line, DOWNLOAD_EVENT_TYPES)`. The
child reads plain `pause` or `cancel` lines on its stdin. No Qt here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Union

DownloadStage = Literal["resolving", "checking", "verifying", "downloading", "finalizing"]
# What went wrong, for the GUI; the message says it in plain words.
# ("crashed" is the supervisor's own: the child ended without saying why.)
DownloadErrorCode = Literal[
    "gated", "not_found", "offline", "unauthorized", "http_error", "network", "failed", "bad_response",
    "not_enough_disk", "busy", "corrupted", "crashed",
]


@dataclass(frozen=True)
class StageChanged:
    TYPE: ClassVar[str] = "stage"
    stage: str
    message: str


@dataclass(frozen=True)
class DownloadPlanned:
    """What the download will do: the files, what the cache already has, what is still to fetch."""

    TYPE: ClassVar[str] = "plan"
    repo_id: str
    commit: str
    files: int
    total_bytes: int
    present_bytes: int
    needed_bytes: int
    free_bytes: int
    reused_files: int
    partial_paths: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DownloadProgress:
    TYPE: ClassVar[str] = "progress"
    stage: str  # "checking", "downloading", "verifying"
    file: str
    done_bytes: int
    total_bytes: int
    rate_bps: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0

    def describe(self) -> str:
        """'1.2 GB of 48 GB · 35.0 MB/s · 23 min 10 s left'."""
        parts = [f"{format_bytes(self.done_bytes)} of {format_bytes(self.total_bytes)}"]
        if self.stage == "downloading":
            parts.append(f"{format_bytes(self.rate_bps)}/s" if self.rate_bps > 0 else "starting…")
            if self.eta_s is not None:
                parts.append(f"{format_duration(self.eta_s)} left")
        elif self.stage == "verifying":
            parts.append("checking files")
        elif self.stage == "checking":
            parts.append("checking the part downloaded before")
        return " · ".join(parts)


@dataclass(frozen=True)
class DownloadDone:
    TYPE: ClassVar[str] = "done"
    path: str  # the snapshot folder
    commit: str


@dataclass(frozen=True)
class DownloadPaused:
    TYPE: ClassVar[str] = "paused"


@dataclass(frozen=True)
class DownloadCancelled:
    TYPE: ClassVar[str] = "cancelled"


@dataclass(frozen=True)
class DownloadFailed:
    TYPE: ClassVar[str] = "error"
    code: DownloadErrorCode
    message: str


DownloadEvent = Union[
    StageChanged, DownloadPlanned, DownloadProgress, DownloadDone, DownloadPaused, DownloadCancelled, DownloadFailed
]
DOWNLOAD_EVENT_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (
        StageChanged, DownloadPlanned, DownloadProgress, DownloadDone, DownloadPaused, DownloadCancelled, DownloadFailed
    )
}


def format_bytes(count: float) -> str:
    """Sizes as Windows shows them (binary units, labelled KB/MB/GB)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(count) < 1024 or unit == "TB":
            if unit == "bytes":
                return f"{int(count)} bytes"
            return f"{count:.1f} {unit}" if count < 100 else f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.0f} TB"


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
