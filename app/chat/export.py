"""Chats to Markdown and to the versioned JSON export (docs/chat-export.md), and that JSON back.

No Qt and no database here: `ExportedChat` is one conversation with its messages; the store
writes an import in one transaction (`ChatStore.import_chats`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from app.chat.attachments import LIMITS_TEXT, SUFFIXES, Attachment, ImageRefused, ImageSource, too_large
from app.chat.messages import FINAL_STATUSES, MESSAGE_STATUSES, Conversation, Message, new_id
from app.chat.replay import ReplayError, decode_frames
from engine.protocol import IMAGE_MEDIA_TYPES, MAX_IMAGE_BYTES

FORMAT_NAME = "canvas-chat-export"
SCHEMA_VERSION = 2  # 2: messages carry their images ("attachments"); version 1 files still import
READABLE_VERSIONS = (1, 2)
# A bigger file is refused before it is read (the whole file is parsed in memory).
MAX_IMPORT_BYTES = 256 * 1024 * 1024
ROLES = ("user", "assistant", "system")
_ROLE_HEADINGS = {"user": "You", "assistant": "Assistant", "system": "System"}


class ImportRefused(ValueError):
    """The file is not an export this version can import. Its text is for the user."""


# How an imported image is checked: its bytes and name -> the image (width and height as decoded),
# or ImageRefused. The GUI passes Qt's decoder (`app.window.attachment_strip.check_image`), the same
# check an image passes when it is attached; without one only the signature and the limits are checked.
ImageCheck = Callable[[bytes, str], ImageSource]
_SIGNATURES = {"image/png": (b"\x89PNG\r\n\x1a\n",), "image/jpeg": (b"\xff\xd8\xff",), "image/webp": (b"RIFF",)}


@dataclass
class ExportedChat:
    """One conversation as exported: its row, its per-chat settings (when it has any), its messages."""

    conversation: Conversation
    messages: list[Message] = field(default_factory=list)
    settings: dict[str, Any] | None = None
    images: dict[str, list[ImageSource]] = field(default_factory=dict)  # of an import: message id -> its images


def chat_of(conversation: Conversation, messages: list[Message]) -> ExportedChat:
    """The export of a stored conversation; a `settings` attribute (per-chat settings) is carried."""
    settings = getattr(conversation, "settings", None)
    return ExportedChat(conversation, list(messages), dict(settings) if isinstance(settings, dict) else None)


# ---------------------------------------------------------------------- Markdown


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _stats_text(stats: dict[str, Any]) -> str:
    parts = []
    for key, template in (
        ("time_to_first_draft_s", "{:.2f} s to first draft"),
        ("tokens_per_s", "{:.1f} tok/s"),
        ("tokens_per_forward", "{:.1f} tok/forward"),
        ("steps_per_canvas", "{:.1f} steps/canvas"),
    ):
        value = stats.get(key)
        if isinstance(value, (int, float)):
            parts.append(template.format(value))
    return " · ".join(parts)


def _image_markdown(attachment: Attachment, link: str | None) -> str:
    label = f"{attachment.name}, {attachment.width}\u00d7{attachment.height}"
    if link is None:
        return f"*(image: {label}; not in this file)*"
    alt = attachment.name.replace("[", "(").replace("]", ")")
    return f"![{alt}](<{link}>)\n*{label}*"


def chat_to_markdown(chat: ExportedChat, image_links: dict[str, str] | None = None) -> str:
    """A readable Markdown transcript: a heading per message, its images (linked where
    `image_links` maps an attachment id to a relative path, else named), its text as written,
    stats in italics."""
    image_links = image_links or {}
    conversation = chat.conversation
    lines = [f"# {conversation.title}", "", f"*Canvas Chat · started {_when(conversation.created)}*", ""]
    for message in chat.messages:
        lines.append(f"## {_ROLE_HEADINGS.get(message.role, message.role)} · {_when(message.created)}")
        lines.append("")
        for attachment in message.attachments:
            lines.extend([_image_markdown(attachment, image_links.get(attachment.id)), ""])
        if message.content or not message.attachments:
            lines.append(message.content.rstrip("\n") if message.content else "*(no text)*")
        lines.append("")
        notes = []
        if message.status != "finished":
            notes.append(message.status + (f": {message.error}" if message.error else ""))
        if message.stats:
            stats = _stats_text(message.stats)
            if stats:
                notes.append(stats)
        if notes:
            lines.extend([f"*{' · '.join(notes)}*", ""])
    return "\n".join(lines)


def chats_to_markdown(chats: list[ExportedChat], image_links: dict[str, str] | None = None) -> str:
    return "\n---\n\n".join(chat_to_markdown(chat, image_links) for chat in chats)


# ---------------------------------------------------------------------- JSON export


def _attachment_json(attachment: Attachment) -> dict[str, Any]:
    try:
        data: str | None = base64.b64encode(attachment.path.read_bytes()).decode("ascii")
    except OSError:
        data = None  # the file is gone from the data folder: its name and size still travel
    return {
        "name": attachment.name,
        "media_type": attachment.media_type,
        "width": attachment.width,
        "height": attachment.height,
        "size_bytes": attachment.size_bytes,
        "data": data,
    }


def _message_json(message: Message, include_replay: bool) -> dict[str, Any]:
    return {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "error": message.error,
        "stats": message.stats,
        "answered_by": message.answered_by,
        "created": message.created,
        "updated": message.updated,
        "replay": base64.b64encode(message.replay).decode("ascii") if include_replay and message.replay else None,
        "attachments": [_attachment_json(attachment) for attachment in message.attachments],
    }


def chats_to_json(chats: list[ExportedChat], include_replay: bool = False, app_version: str = "") -> str:
    """The export document (docs/chat-export.md), pretty-printed UTF-8 JSON text."""
    document = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "exported": time.time(),
        "app_version": app_version,
        "includes_replay": include_replay,
        "conversations": [
            {
                "id": chat.conversation.id,
                "title": chat.conversation.title,
                "created": chat.conversation.created,
                "updated": chat.conversation.updated,
                "settings": chat.settings,
                "messages": [_message_json(message, include_replay) for message in chat.messages],
            }
            for chat in chats
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=1, allow_nan=False) + "\n"


# ---------------------------------------------------------------------- JSON import


def _field(obj: dict[str, Any], name: str, kinds: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    if name not in obj:
        if optional:
            return None
        raise ImportRefused(f"{where} has no “{name}”.")
    value = obj[name]
    if value is None and optional:
        return None
    # bool is an int in Python; a number field that holds true/false is still wrong.
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        value_ok = False
    else:
        value_ok = isinstance(value, kinds)
    if not value_ok:
        raise ImportRefused(f"{where}: “{name}” has the wrong type ({type(value).__name__}).")
    if isinstance(value, float) and not math.isfinite(value):
        raise ImportRefused(f"{where}: “{name}” is not a finite number.")
    return value


def _parse_image(obj: Any, where: str, check_image: ImageCheck | None) -> ImageSource | None:
    """One attached image, checked as an attached one is; None for one exported without its bytes."""
    if not isinstance(obj, dict):
        raise ImportRefused(f"{where} is not an object.")
    name = _field(obj, "name", str, where)
    where = f"{where} (“{name[:40]}”)"
    media_type = _field(obj, "media_type", str, where)
    width, height = _field(obj, "width", int, where), _field(obj, "height", int, where)
    if media_type not in SUFFIXES:
        raise ImportRefused(f"{where}: “{media_type}” is not an image Canvas Chat can send ({LIMITS_TEXT}).")
    text = _field(obj, "data", str, where, optional=True)
    if text is None:
        return None
    if len(text) > (MAX_IMAGE_BYTES + 2) // 3 * 4:
        raise ImportRefused(f"{where}: {too_large(name)}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImportRefused(f"{where}: its bytes (“data”) are not base64 ({exc}).") from None
    if media_type in _SIGNATURES and not data.startswith(_SIGNATURES[media_type]):
        raise ImportRefused(f"{where}: its bytes are not a {IMAGE_MEDIA_TYPES[media_type]} image.")
    try:
        if check_image is not None:
            checked = check_image(data, name)
            if checked.media_type != media_type:
                raise ImageRefused(f"{name} is a {IMAGE_MEDIA_TYPES[checked.media_type]} image, not {media_type}.")
            return checked
        if width <= 0 or height <= 0:
            raise ImageRefused(f"{name} has no size ({width}\u00d7{height}).")
        return ImageSource(data, media_type, name, width, height)
    except ImageRefused as exc:
        raise ImportRefused(f"{where}: {exc}") from None


def _parse_message(obj: Any, where: str, conversation_id: str, check_image: ImageCheck | None = None) -> tuple[Message, list[ImageSource]]:
    if not isinstance(obj, dict):
        raise ImportRefused(f"{where} is not an object.")
    role = _field(obj, "role", str, where)
    if role not in ROLES:
        raise ImportRefused(f"{where}: unknown role “{role}”.")
    status = _field(obj, "status", str, where)
    if status not in MESSAGE_STATUSES:
        raise ImportRefused(f"{where}: unknown status “{status}”.")
    if status not in FINAL_STATUSES:
        status = "interrupted"  # a reply that was still being written when it was exported
    stats = _field(obj, "stats", dict, where, optional=True)
    replay_text = _field(obj, "replay", str, where, optional=True)
    replay = None
    if replay_text:
        try:
            replay = base64.b64decode(replay_text, validate=True)
            for _frame in decode_frames(replay):
                pass
        except (binascii.Error, ValueError, ReplayError) as exc:
            raise ImportRefused(f"{where}: its recorded drafts (“replay”) cannot be read ({exc}).") from None
    attachments = _field(obj, "attachments", list, where, optional=True) or []
    if attachments and role != "user":
        raise ImportRefused(f"{where}: only your own messages can have images.")
    images = [_parse_image(item, f"{where}, image {n}", check_image) for n, item in enumerate(attachments, start=1)]
    message = Message(
        id=new_id(),
        conversation_id=conversation_id,
        role=role,
        content=_field(obj, "content", str, where),
        status=status,
        error=_field(obj, "error", str, where, optional=True) or "",
        stats=stats,
        answered_by=_field(obj, "answered_by", str, where, optional=True) or "",
        replay=replay,
        created=float(_field(obj, "created", (int, float), where)),
        updated=float(_field(obj, "updated", (int, float), where)),
    )
    return message, [image for image in images if image is not None]


def parse_chats_json(text: str | bytes, check_image: ImageCheck | None = None) -> list[ExportedChat]:
    """The chats of an export document, with NEW conversation and message ids (so that importing
    the same file twice gives two copies, never a clash). Raises `ImportRefused` on anything wrong."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImportRefused(f"This is not a JSON file ({exc}).") from None
    except RecursionError:
        raise ImportRefused("This JSON file is nested too deeply to be a chat export.") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise ImportRefused("This JSON file is not a Canvas Chat export (its “format” is not “canvas-chat-export”).")
    version = document.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ImportRefused("This export has no valid “schema_version”.")
    if version not in READABLE_VERSIONS:
        newer = " It was written by a newer Canvas Chat." if version > SCHEMA_VERSION else ""
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise ImportRefused(f"This export has schema version {version}; this Canvas Chat reads versions {readable}.{newer}")
    conversations = _field(document, "conversations", list, "The export")
    chats = []
    for number, obj in enumerate(conversations, start=1):
        where = f"Chat {number}"
        if not isinstance(obj, dict):
            raise ImportRefused(f"{where} is not an object.")
        title = _field(obj, "title", str, where)
        conversation = Conversation(
            title=title,
            id=new_id(),
            created=float(_field(obj, "created", (int, float), where)),
            updated=float(_field(obj, "updated", (int, float), where)),
        )
        settings = _field(obj, "settings", dict, where, optional=True)
        messages = _field(obj, "messages", list, where)
        chat = ExportedChat(conversation, [], settings)
        for index, obj_message in enumerate(messages, start=1):
            message, images = _parse_message(obj_message, f"{where} (“{title[:40]}”), message {index}", conversation.id, check_image)
            chat.messages.append(message)
            if images:
                chat.images[message.id] = images
        chats.append(chat)
    return chats


def read_chats_file(path: Path, check_image: ImageCheck | None = None) -> list[ExportedChat]:
    """`parse_chats_json` of a file, refusing a file too big to be an export before reading it."""
    try:
        size = path.stat().st_size
        if size > MAX_IMPORT_BYTES:
            raise ImportRefused(
                f"{path.name} is {size / 2**20:.0f} MB; an export this version imports is at most "
                f"{MAX_IMPORT_BYTES // 2**20} MB."
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ImportRefused(f"{path.name} could not be read: {exc.strerror or exc}.") from None
    return parse_chats_json(data, check_image)

