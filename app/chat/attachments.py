"""Images attached to user messages (no Qt): what the composer hands over, and what the store keeps.

The image files live in an `images/<conversation id>/` folder beside the chat database (the app's
data folder); the `attachments` table names them. Deleting a chat for good deletes its folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from app.chat.messages import new_id
from engine.protocol import IMAGE_MEDIA_TYPES, MAX_IMAGE_BYTES, ChatMessage, ImagePart, TextPart

IMAGES_FOLDER = "images"
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}
assert set(SUFFIXES) == set(IMAGE_MEDIA_TYPES)
# Said wherever images are refused or offered, so the limits read the same everywhere.
LIMITS_TEXT = f"PNG, JPEG or WebP, up to {MAX_IMAGE_BYTES // 2**20} MB"


def too_large(name: str) -> str:
    return f"{name} is larger than {MAX_IMAGE_BYTES // 2**20} MB, the most an image can be."


class ImageRefused(ValueError):
    """An image that cannot be attached; its text is for the user."""


@dataclass(frozen=True)
class ImageSource:
    """An image checked and ready to attach: its encoded bytes as they will be stored."""

    data: bytes = field(repr=False)
    media_type: str
    name: str  # the file name the user chose ("pasted image" for the clipboard)
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.media_type not in SUFFIXES:
            raise ImageRefused(f"{self.name} is not an image Canvas Chat can send ({LIMITS_TEXT}).")
        if len(self.data) > MAX_IMAGE_BYTES:
            raise ImageRefused(too_large(self.name))


@dataclass(frozen=True)
class Attachment:
    """A stored image of a message."""

    message_id: str
    path: Path  # absolute: where the file is now
    media_type: str
    name: str
    width: int
    height: int
    size_bytes: int
    id: str = field(default_factory=new_id)


def conversation_images_dir(images_root: Path, conversation_id: str) -> Path:
    return Path(images_root) / conversation_id


def write_image_files(images_root: Path, conversation_id: str, message_id: str, sources: list[ImageSource]) -> list[Attachment]:
    """Copies each image into the conversation's folder; on a failure none of them stays. OSError
    (a full disk, a read-only folder) reaches the caller."""
    folder = conversation_images_dir(images_root, conversation_id)
    written: list[Attachment] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for source in sources:
            attachment_id = new_id()
            path = folder / f"{attachment_id}{SUFFIXES[source.media_type]}"
            written.append(
                Attachment(message_id, path, source.media_type, source.name, source.width, source.height, len(source.data), attachment_id)
            )
            path.write_bytes(source.data)
    except OSError:
        remove_image_files(written)
        raise
    return written


def remove_image_files(attachments: list[Attachment]) -> None:
    for attachment in attachments:
        attachment.path.unlink(missing_ok=True)


def remove_conversation_images(images_root: Path, conversation_id: str) -> None:
    if conversation_id:
        shutil.rmtree(conversation_images_dir(images_root, conversation_id), ignore_errors=True)


def sources_of(attachments: tuple[Attachment, ...] | list[Attachment]) -> list[ImageSource]:
    """Stored images as sources again (to resend an edited message); a file gone missing is left out."""
    sources = []
    for attachment in attachments:
        try:
            data = attachment.path.read_bytes()
        except OSError:
            continue
        sources.append(ImageSource(data, attachment.media_type, attachment.name, attachment.width, attachment.height))
    return sources


def chat_message_of(message) -> ChatMessage:
    """What the engine is sent for a message: one string, or its images then its text."""
    if not message.attachments:
        return ChatMessage(role=message.role, content=message.content)
    parts: list = [ImagePart(str(a.path), a.media_type) for a in message.attachments]
    if message.content:
        parts.append(TextPart(message.content))
    return ChatMessage(role=message.role, content=parts)
