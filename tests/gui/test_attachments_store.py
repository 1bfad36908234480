"""Attached images in the store: kept beside the database, read back with their message, and
deleted with the message or the chat (also when a deleted chat is purged on the next start)."""

from __future__ import annotations

from app.chat.attachments import ImageSource, write_image_files
from app.chat.messages import Message
from app.chat.store import ChatStore

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # the store keeps bytes as given; the composer checks them


def _message_with_images(store: ChatStore, conversation_id: str, count: int = 2) -> Message:
    message = Message(role="user", content="Look", conversation_id=conversation_id)
    sources = [ImageSource(PNG + bytes([i]), "image/png", f"photo-{i}.png", 4, 3) for i in range(count)]
    message.attachments = tuple(write_image_files(store.images_root, conversation_id, message.id, sources))
    store.add_message(message)
    return message


def test_images_come_back_with_their_message_in_order(chat_store):
    conversation = chat_store.create_conversation()
    sent = _message_with_images(chat_store, conversation.id)
    chat_store.add_message(Message(role="assistant", content="Two photos.", conversation_id=conversation.id))
    question, answer = chat_store.messages(conversation.id)
    assert [(a.name, a.path, a.width, a.height) for a in question.attachments] == [
        (a.name, a.path, a.width, a.height) for a in sent.attachments
    ]
    assert [a.path.read_bytes()[-1] for a in question.attachments] == [0, 1]
    assert answer.attachments == ()
    assert chat_store.get_message(sent.id).attachments == question.attachments


def test_deleting_a_chat_deletes_its_images_when_it_is_purged(chat_store, tmp_path):
    kept = chat_store.create_conversation()
    doomed = chat_store.create_conversation()
    kept_files = [a.path for a in _message_with_images(chat_store, kept.id).attachments]
    doomed_files = [a.path for a in _message_with_images(chat_store, doomed.id).attachments]
    chat_store.delete_conversation(doomed.id)
    assert all(path.exists() for path in doomed_files)  # undo is possible until the next start
    path = chat_store.path
    chat_store.close()

    reopened = ChatStore(path)  # purges the deleted chat
    try:
        assert not any(path.exists() for path in doomed_files)
        assert not (reopened.images_root / doomed.id).exists()
        assert all(path.exists() for path in kept_files)
        assert [a.path for a in reopened.messages(kept.id)[0].attachments] == kept_files
    finally:
        reopened.close()


def test_deleting_messages_deletes_their_images(chat_store):
    conversation = chat_store.create_conversation()
    first = _message_with_images(chat_store, conversation.id, count=1)
    second = _message_with_images(chat_store, conversation.id, count=1)
    chat_store.delete_messages_from(second.id)
    assert first.attachments[0].path.exists()
    assert not second.attachments[0].path.exists()
