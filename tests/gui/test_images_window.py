"""Images in the chat through the real window and worker (a tiny model with a tiny vision tower):
attach, send, the thumbnail in the message, after a restart too; refusals store nothing; the
demo model's attach button says why it is off."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from PySide6.QtCore import QMimeData, QUrl, Qt
from PySide6.QtGui import QColor, QImage

from app.chat.store import ChatStore
from app.settings import Settings
from app.transcript.delegate import BUBBLE_PAD_Y
from app.transcript.message_images import THUMB_HEIGHT
from app.window.main_window import MainWindow
from app.worker.engine_client import EngineClient
from engine.protocol import MAX_IMAGE_BYTES
from tests.conftest import timeout_ms
from tests.gui.window_helpers import ignore_offscreen_limits, wait_model_loaded
from tests.tiny_model import write_test_image

pytestmark = [pytest.mark.slow, ignore_offscreen_limits]

SETTINGS = Settings(max_denoising_steps=8, max_new_tokens=16, seed=7)
RED = (220, 30, 30)


@pytest.fixture
def open_window(qtbot, tiny_vision_model_dir, monkeypatch):
    windows: list[MainWindow] = []

    def open_(model=None, start: bool = True) -> MainWindow:
        monkeypatch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", "A red picture.")
        store = ChatStore()
        window = MainWindow(SETTINGS, store, EngineClient(restart_delays_s=(0.05, 0.1, 0.2)))
        window.resize(1000, 700)
        window.show()
        qtbot.waitExposed(window)
        windows.append(window)
        if start:
            assert window.start_engine(str(model or tiny_vision_model_dir))
            wait_model_loaded(qtbot, window)
        return window

    yield open_
    for window in windows:
        window.close()
        window.client.shutdown()
        window.store.close()
        window.deleteLater()


def send(qtbot, window, text: str):
    done = []
    window.client.generation_finished.connect(done.append)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(90)):
        window.composer.set_text(text)
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    window.client.generation_finished.disconnect(done.append)
    return done[-1]


def thumbnail_center_color(window, message_id: str) -> QColor:
    view = window.transcript_view
    row = window.controller.transcript.index_of(message_id)
    geometry = view.delegate.row_geometry(view.model().index(row, 0))
    image = view.viewport().grab().toImage()
    return image.pixelColor(geometry.content_left + 20, geometry.bubble.top() + BUBBLE_PAD_Y + THUMB_HEIGHT // 2)


def close_enough(color: QColor, rgb) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip((color.red(), color.green(), color.blue()), rgb))


def test_an_attached_image_reaches_the_model_and_survives_a_restart(open_window, qtbot, tmp_path, tiny_vision_model_dir):
    window = open_window()
    assert window.composer.attach_button.isEnabled()
    text_only = send(qtbot, window, "What is in this picture?")

    window.new_chat()
    picture = write_test_image(tmp_path / "red.png", size=(80, 60), color=RED)
    window.composer.attachments.add_files([str(picture)])
    assert len(window.composer.attachments.sources()) == 1 and window.composer.attachments.isVisible()
    with_image = send(qtbot, window, "What is in this picture?")
    assert window.composer.attachments.sources() == []  # sent: the composer is empty again

    # The image's soft tokens went into the prompt the model read (tests/test_images.py shows the
    # pixels themselves condition the reply).
    assert with_image.stats.prompt_tokens > text_only.stats.prompt_tokens + 40
    conversation_id = window.controller.current_conversation_id
    question = window.controller.transcript.last(role="user")
    (attachment,) = question.attachments
    assert attachment.path.read_bytes() == picture.read_bytes()
    assert attachment.path.parent == window.store.images_root / conversation_id
    assert close_enough(thumbnail_center_color(window, question.id), RED)
    database = window.store.path
    window.close()
    window.store.close()

    # Reopened on the same database, with a model that takes no images (a demo-marked copy).
    demo = shutil.copytree(tiny_vision_model_dir, tmp_path / "demo-like")
    (demo / "demo.json").write_text("{}", encoding="utf-8")
    second = open_window(model=demo)
    assert second.store.path == database
    second.sidebar.select_conversation(conversation_id)
    assert second.controller.current_conversation_id == conversation_id
    reopened = second.controller.transcript.last(role="user")
    assert [a.path for a in reopened.attachments] == [attachment.path]
    qtbot.waitUntil(lambda: close_enough(thumbnail_center_color(second, reopened.id), RED), timeout=timeout_ms(10))

    button = second.composer.attach_button
    assert not button.isEnabled()
    assert "demo model cannot read images" in button.toolTip()
    assert button.accessibleDescription() == button.toolTip()


def test_an_unreadable_or_oversized_image_is_refused_and_nothing_is_stored(open_window, qtbot, tmp_path):
    window = open_window(start=False)  # the checks are the composer's own
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not a picture at all")
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as file:
        file.truncate(MAX_IMAGE_BYTES + 1)
    gif = tmp_path / "anim.gif"
    write_test_image(gif)

    window.composer.attachments.add_files([str(corrupt), str(huge), str(gif)])
    problem = window.composer.attachments.problem_label.text()
    assert "broken.png" in problem and "huge.jpg" in problem and f"larger than {MAX_IMAGE_BYTES // 2**20} MB" in problem
    assert "anim.gif" in problem and "PNG, JPEG or WebP" in problem
    assert window.composer.attachments.sources() == []
    assert not window.store.images_root.exists() or not any(window.store.images_root.rglob("*"))
    with sqlite3.connect(window.store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM attachments").fetchone()[0] == 0


def test_a_pasted_bitmap_and_a_dropped_file_become_attachments(open_window, qtbot, tmp_path):
    window = open_window()
    pasted = QMimeData()
    bitmap = QImage(30, 20, QImage.Format.Format_RGB32)
    bitmap.fill(QColor(*RED))
    pasted.setImageData(bitmap)
    window.composer.edit.insertFromMimeData(pasted)
    dropped = QMimeData()
    dropped.setUrls([QUrl.fromLocalFile(str(write_test_image(tmp_path / "drop.webp")))])
    assert window.composer.edit.canInsertFromMimeData(dropped)
    window.composer.edit.insertFromMimeData(dropped)
    sources = window.composer.attachments.sources()
    assert [(s.name, s.media_type, s.width, s.height) for s in sources] == [
        ("pasted image", "image/png", 30, 20),
        ("drop.webp", "image/webp", 64, 48),
    ]
    assert window.composer.edit.toPlainText() == ""  # no file path pasted as text
    assert window.composer.send_button.isEnabled()
    # Images alone are a message: the chat is named after the first one.
    with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(90)):
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    question = window.controller.transcript.last(role="user")
    assert question.content == "" and [a.name for a in question.attachments] == ["pasted image", "drop.webp"]
    assert window.controller.conversations.get(question.conversation_id).title == "pasted image"


def test_a_server_is_sent_text_only_and_attaching_is_off_while_one_is_used(qapp):
    import json

    from app.remote.backend import RemoteBackend
    from app.remote.server import RemoteServer
    from app.window.attachment_strip import REMOTE_REASON, attach_state
    from engine.protocol import ChatMessage, ImagePart, ModelLoaded, TextPart

    remote = RemoteBackend(RemoteServer("http://127.0.0.1:9/v1", "google/diffusiongemma-26B-A4B-it"))
    try:
        question = ChatMessage("user", [ImagePart("/data/images/c/1.png", "image/png"), TextPart("What is this?")])
        body = remote.request_body([question], "", None, False)
    finally:
        remote.shutdown()
        remote.deleteLater()
    assert json.loads(json.dumps(body))["messages"] == [{"role": "user", "content": "What is this?"}]
    vision = ModelLoaded("l", "m", "/m", "cpu", "none", 16, 1, 0.1, accepts_images=True)
    assert attach_state(vision) == (True, "")
    assert attach_state(vision, remote=True) == (False, REMOTE_REASON)
