"""Images through export and import: the JSON carries each image's bytes and import writes them
back byte for byte; a bad or oversized image refuses the whole file and leaves no row and no file;
a version 1 file (no images) still imports; Markdown links copies of the images."""

from __future__ import annotations

import base64
import json

import pytest
from PySide6.QtCore import QBuffer, QByteArray, QIODevice
from PySide6.QtGui import QColor, QImage
from PySide6.QtWidgets import QFileDialog

from app.chat import attachments as attachments_module
from app.chat import export
from app.chat import store as store_module
from app.chat.attachments import write_image_files
from app.chat.export import ImportRefused, chat_of, chats_to_json, chats_to_markdown, parse_chats_json, read_chats_file
from app.chat.messages import Message
from app.chat.store import ChatStore, StoreWriteError
from app.window import attachment_strip
from app.window.attachment_strip import check_image
from app.window.chat_files import write_markdown_images
from tests.gui.window_helpers import TEST_SETTINGS, ignore_offscreen_limits


def encoded(width: int, height: int, kind: str = "PNG", color=(200, 60, 40)) -> bytes:
    image = QImage(width, height, QImage.Format.Format_RGB32)
    image.fill(QColor(*color))
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    assert image.save(buffer, kind)
    return bytes(data.data())


def _chat_with_images(store: ChatStore, title: str = "Photos"):
    conversation = store.create_conversation(title)
    question = Message(role="user", content="What is in these?", conversation_id=conversation.id, created=1_700_000_000.0, updated=1_700_000_000.0)
    sources = [check_image(encoded(64, 48), "red [1].png"), check_image(encoded(30, 20, "JPEG", (0, 90, 200)), "blue.jpg")]
    question.attachments = tuple(write_image_files(store.images_root, conversation.id, question.id, sources))
    store.add_message(question)
    store.add_message(Message(role="assistant", content="A red and a blue picture.", conversation_id=conversation.id))
    return chat_of(store.get_conversation(conversation.id), store.messages(conversation.id))


def _files(store: ChatStore) -> list:
    root = store.images_root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _rows(store: ChatStore) -> list:
    return [
        (c.id, [(m.id, m.content, [(a.name, a.path.name) for a in m.attachments]) for m in store.messages(c.id)])
        for c in store.list_conversations()
    ]


def test_json_export_then_import_gives_back_every_image_byte_for_byte(chat_store):
    original = _chat_with_images(chat_store)
    text = chats_to_json([original])
    carried = json.loads(text)["conversations"][0]["messages"][0]["attachments"]
    assert [(a["name"], a["media_type"], a["width"], a["height"]) for a in carried] == [
        ("red [1].png", "image/png", 64, 48), ("blue.jpg", "image/jpeg", 30, 20),
    ]

    [conversation] = chat_store.import_chats(parse_chats_json(text, check_image))
    question, answer = chat_store.messages(conversation.id)
    sent = original.messages[0].attachments
    assert [(a.name, a.media_type, a.width, a.height, a.size_bytes) for a in question.attachments] == [
        (a.name, a.media_type, a.width, a.height, a.size_bytes) for a in sent
    ]
    assert [a.path.read_bytes() for a in question.attachments] == [a.path.read_bytes() for a in sent]
    assert all(a.path.parent == chat_store.images_root / conversation.id for a in question.attachments)
    assert {a.id for a in question.attachments}.isdisjoint({a.id for a in sent})
    assert answer.attachments == () and answer.content == "A red and a blue picture."


def test_a_version_1_export_without_images_still_imports(chat_store):
    document = json.loads(chats_to_json([_chat_with_images(chat_store)]))
    document["schema_version"] = 1
    for message in document["conversations"][0]["messages"]:
        del message["attachments"]
    [conversation] = chat_store.import_chats(parse_chats_json(json.dumps(document), check_image))
    assert [m.content for m in chat_store.messages(conversation.id)] == ["What is in these?", "A red and a blue picture."]


def _image_field(field: str, value):
    def change(image: dict) -> None:
        image[field] = value
    return change


def _truncate(image: dict) -> None:
    image["data"] = base64.b64encode(base64.b64decode(image["data"])[:40]).decode()  # a PNG signature, then nothing


BAD_IMAGES = {
    "not base64": (_image_field("data", "%%% not base64 %%%"), "not base64"),
    "not a JPEG": (_image_field("data", base64.b64encode(b"GIF89a" + b"\0" * 40).decode()), "not a JPEG image"),
    "cut short": (_truncate, "cannot be read as an image"),
    "a GIF": (_image_field("media_type", "image/gif"), "not an image Canvas Chat can send"),
    "no width": (_image_field("width", "wide"), "wrong type"),
}


@pytest.mark.qt_log_ignore("Corrupt JPEG data", "JPEG datastream contains no image")  # Qt's decoder, on "cut short"
@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_a_bad_image_refuses_the_whole_import_and_leaves_no_row_and_no_file(chat_store, tmp_path, name):
    change, words = BAD_IMAGES[name]
    document = json.loads(chats_to_json([_chat_with_images(chat_store, "Good"), _chat_with_images(chat_store, "Bad")]))
    change(document["conversations"][1]["messages"][0]["attachments"][1])  # a good chat with images comes first
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    rows, files = _rows(chat_store), _files(chat_store)
    with pytest.raises(ImportRefused, match=words):
        chat_store.import_chats(read_chats_file(path, check_image))
    assert (_rows(chat_store), _files(chat_store)) == (rows, files)


def test_an_image_over_the_size_limit_is_refused(chat_store, monkeypatch):
    text = chats_to_json([_chat_with_images(chat_store)])
    limit = len(encoded(64, 48)) - 1  # the red PNG is one byte over; the blue JPEG is under
    monkeypatch.setattr(export, "MAX_IMAGE_BYTES", limit)
    monkeypatch.setattr(attachment_strip, "MAX_IMAGE_BYTES", limit)
    monkeypatch.setattr(attachments_module, "MAX_IMAGE_BYTES", limit)
    with pytest.raises(ImportRefused, match=r"message 1, image 1 \(“red \[1\].png”\): red \[1\].png is larger than"):
        parse_chats_json(text, check_image)


def test_an_image_on_a_reply_is_refused(chat_store):
    document = json.loads(chats_to_json([_chat_with_images(chat_store)]))
    messages = document["conversations"][0]["messages"]
    messages[1]["attachments"] = messages[0]["attachments"]
    with pytest.raises(ImportRefused, match="only your own messages can have images"):
        parse_chats_json(json.dumps(document), check_image)


@pytest.mark.log_expected("chat database write failed: CHECK constraint failed")
def test_a_database_write_that_fails_after_the_images_were_written_removes_them(chat_store):
    text = chats_to_json([_chat_with_images(chat_store, "One"), _chat_with_images(chat_store, "Two")])
    first, second = parse_chats_json(text, check_image)
    second.messages[-1].status = "no such status"  # refused by the database after the images were written
    rows, files = _rows(chat_store), _files(chat_store)
    with pytest.raises(StoreWriteError):
        chat_store.import_chats([first, second])
    assert (_rows(chat_store), _files(chat_store)) == (rows, files)


def test_a_disk_that_refuses_an_image_half_way_imports_nothing(chat_store, monkeypatch):
    text = chats_to_json([_chat_with_images(chat_store, "One"), _chat_with_images(chat_store, "Two")])
    chats = parse_chats_json(text, check_image)
    real_write = store_module.write_image_files
    calls = []

    def write_then_fail(*args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(*args)

    monkeypatch.setattr(store_module, "write_image_files", write_then_fail)
    rows, files = _rows(chat_store), _files(chat_store)
    with pytest.raises(StoreWriteError, match="No space left on device"):
        chat_store.import_chats(chats)
    assert len(calls) == 2
    assert (_rows(chat_store), _files(chat_store)) == (rows, files)


def test_markdown_links_copies_of_the_images_beside_it(chat_store, tmp_path):
    chat = _chat_with_images(chat_store)
    target = tmp_path / "Photos.md"
    links = write_markdown_images(target, [chat])
    text = chats_to_markdown([chat], links)
    assert "![red (1).png](<Photos_images/01-red [1].png>)\n*red [1].png, 64×48*" in text
    assert "![blue.jpg](<Photos_images/02-blue.jpg>)" in text
    assert text.index("Photos_images/01") < text.index("What is in these?")
    sent = chat.messages[0].attachments
    assert [(tmp_path / link).read_bytes() for link in links.values()] == [a.path.read_bytes() for a in sent]
    sent[1].path.unlink()  # a file gone from the data folder is named, not linked
    text = chats_to_markdown([chat], write_markdown_images(tmp_path / "again.md", [chat]))
    assert "*(image: blue.jpg, 30×20; not in this file)*" in text


# ---------------------------------------------------------------------- the File menu


@pytest.fixture
def window(qtbot):
    from app.window.main_window import MainWindow
    from app.worker.engine_client import EngineClient

    store = ChatStore()
    client = EngineClient()
    win = MainWindow(TEST_SETTINGS, store, client)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close()
    client.shutdown()
    store.close()
    win.deleteLater()


@ignore_offscreen_limits
def test_file_menu_round_trips_images_and_refuses_an_undecodable_one(window, qtbot, monkeypatch, tmp_path):
    chat = _chat_with_images(window.store)
    window.controller.conversations.insert(0, chat.conversation)
    window.controller.open_conversation(chat.conversation.id)
    files = window.chat_files
    written = tmp_path / "photos.json"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(written), ""))
    dialog = files.export_chat()
    with qtbot.waitSignal(files.exported):
        dialog.accept()
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(written), ""))
    with qtbot.waitSignal(files.imported):
        files.import_action.trigger()
    shown = window.controller.transcript[0].attachments
    assert [a.path.read_bytes() for a in shown] == [a.path.read_bytes() for a in chat.messages[0].attachments]

    document = json.loads(written.read_text(encoding="utf-8"))
    _truncate(document["conversations"][0]["messages"][0]["attachments"][0])  # only Qt's decoder sees this
    written.write_text(json.dumps(document), encoding="utf-8")
    rows, images = _rows(window.store), _files(window.store)
    files.import_action.trigger()
    box = files.message_box
    assert box is not None and box.text() == "Nothing was imported." and "cannot be read as an image" in box.informativeText()
    box.accept()
    assert (_rows(window.store), _files(window.store)) == (rows, images)
