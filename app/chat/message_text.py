"""What a message says to a screen reader and in its hover tooltip: role, text, status, time.

A streaming reply is announced as "generating, canvas N", never by its noise tokens.
"""

from __future__ import annotations

import time

ROLE_NAMES = {"user": "You", "assistant": "Assistant", "system": "System"}
STATUS_WORDS = {
    "sending": "sending",
    "streaming": "generating",
    "finished": "finished",
    "stopped": "stopped by you",
    "interrupted": "interrupted",
    "error": "failed",
}


def when(timestamp: float, now: float | None = None) -> str:
    """"14:02 today", or "2 Dec 2026, 14:02" (local time)."""
    moment = time.localtime(timestamp)
    today = time.localtime(time.time() if now is None else now)
    clock = time.strftime("%H:%M", moment)
    if moment[:3] == today[:3]:
        return f"{clock} today"
    return f"{moment.tm_mday} {time.strftime('%b %Y', moment)}, {clock}"


def timestamp_tooltip(message, now: float | None = None) -> str:
    verb = "Sent" if message.role == "user" else "Written"
    return f"{verb} {when(message.created, now)}"


def generating_text(message) -> str:
    draft = message.draft
    canvas = f", canvas {draft.canvas_index + 1}" if draft is not None else ""
    return f"generating{canvas}"


def images_text(message) -> str:
    """"1 image: name.png, 640×480" (names and sizes of the message's images); "" without."""
    attachments = getattr(message, "attachments", ())
    if not attachments:
        return ""
    count = "1 image" if len(attachments) == 1 else f"{len(attachments)} images"
    return f"{count}: " + "; ".join(f"{a.name}, {a.width}\u00d7{a.height}" for a in attachments)


def accessible_text(message) -> str:
    """Role, images and text; a reply being written says "generating, canvas N" instead of its
    open canvas."""
    role = ROLE_NAMES.get(message.role, message.role)
    if message.status == "streaming":
        committed = f": {message.content}" if message.content else ""
        return f"{role}, {generating_text(message)}{committed}"
    images = images_text(message)
    if images:
        return f"{role}: {images}" + (f". {message.content}" if message.content else "")
    return f"{role}: {message.content}" if message.content else f"{role}: (empty)"


def accessible_description(message, now: float | None = None) -> str:
    """Role, status and time (and the error, if any)."""
    role = ROLE_NAMES.get(message.role, message.role)
    status = generating_text(message) if message.status == "streaming" else STATUS_WORDS.get(message.status, message.status)
    error = f"; {message.error}" if message.error else ""
    images = "; Enter opens its images" if getattr(message, "attachments", ()) else ""
    return f"{role} message, {status}, {timestamp_tooltip(message, now).lower()}{error}{images}"
