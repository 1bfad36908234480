"""A message's images in the transcript: a screen reader hears their names and sizes; clicking a
thumbnail, Enter on the selected message or its menu opens the image at full size (fit to the
window, Esc closes); edit-and-resend keeps the message's images and adds those attached while
editing. The real window, no worker started."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QSize, Qt, QTimer
from PySide6.QtGui import QAccessible, QContextMenuEvent
from PySide6.QtWidgets import QApplication, QMenu

from app.chat.attachments import write_image_files
from app.chat.messages import Message
from app.chat.store import ChatStore
from app.settings import Settings
from app.transcript.delegate import BUBBLE_PAD_Y
from app.window.attachment_strip import check_image
from app.window.main_window import MainWindow
from app.worker.engine_client import EngineClient
from tests.conftest import timeout_ms
from tests.gui.test_chat_export_images import encoded
from tests.gui.window_helpers import ignore_offscreen_limits

pytestmark = [ignore_offscreen_limits]


@pytest.fixture
def window(qtbot):
    """The window on a chat whose question has a small red PNG and a big blue one."""
    store = ChatStore()
    chat = store.create_conversation("Photos")
    question = Message(role="user", content="What is in these?", conversation_id=chat.id)
    sources = [check_image(encoded(64, 48), "red.png"), check_image(encoded(2400, 1600, color=(0, 60, 220)), "big blue.png")]
    question.attachments = tuple(write_image_files(store.images_root, chat.id, question.id, sources))
    store.add_message(question)
    store.add_message(Message(role="assistant", content="Two pictures.", conversation_id=chat.id))
    main = MainWindow(Settings(), store, EngineClient())
    qtbot.addWidget(main)
    main.resize(1000, 700)
    main.show()
    qtbot.waitExposed(main)
    main.controller.open_conversation(chat.id)
    yield main
    if main.transcript_view.image_viewer is not None:
        main.transcript_view.image_viewer.close()
    main.close()
    main.client.shutdown()
    store.close()


def _thumbnail_center(window, number: int) -> QPoint:
    view = window.transcript_view
    question = window.controller.transcript[0]
    geometry = view.delegate.row_geometry(view.model().index(0, 0))
    rects = view.delegate.images._rects(question, geometry.content_width)
    return rects[number].center() + QPoint(geometry.content_left, geometry.bubble.top() + BUBBLE_PAD_Y)


def test_a_message_tells_a_screen_reader_its_images(window):
    interface = QAccessible.queryAccessibleInterface(window.transcript_view)
    question = interface.child(0)
    assert question.text(QAccessible.Text.Name) == (
        "You: 2 images: red.png, 64\u00d748; big blue.png, 2400\u00d71600. What is in these?"
    )
    assert question.text(QAccessible.Text.Description).endswith("; Enter opens its images")
    assert interface.child(1).text(QAccessible.Text.Name) == "Assistant: Two pictures."


def test_clicking_a_thumbnail_opens_that_image_fitted_and_esc_closes_it(window, qtbot):
    view = window.transcript_view
    with qtbot.waitSignal(view.image_opened) as opened:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=_thumbnail_center(window, 1))
    viewer = view.image_viewer
    question = window.controller.transcript[0]
    assert opened.args == [question.id, 1] and viewer.isVisible()
    assert viewer.windowTitle() == "big blue.png (2 of 2)"
    assert viewer.image_label.accessibleName() == "big blue.png, 2400\u00d71600 (2 of 2)"
    shown = viewer.shown_size()
    room = viewer.image_label.size()
    assert shown.width() <= room.width() and shown.height() <= room.height() and shown.width() < 2400
    assert abs(shown.width() / shown.height() - 1.5) < 0.02  # fitted, not stretched
    centre = viewer.image_label.pixmap().toImage().pixelColor(shown.width() // 2, shown.height() // 2)
    assert (centre.red(), centre.green(), centre.blue()) == (0, 60, 220)

    qtbot.keyClick(viewer, Qt.Key.Key_Right)  # the message's other image, at its own size (never enlarged)
    assert viewer.windowTitle() == "red.png (1 of 2)" and viewer.shown_size() == QSize(64, 48)
    qtbot.keyClick(viewer, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: view.image_viewer is None, timeout=timeout_ms(5))


def test_a_click_beside_the_thumbnails_opens_nothing(window, qtbot):
    view = window.transcript_view
    x = _thumbnail_center(window, 0).x()
    geometry = view.delegate.row_geometry(view.model().index(0, 0))
    thumbnails_top = geometry.bubble.top() + BUBBLE_PAD_Y
    for y in (thumbnails_top - 4, geometry.content_top + 4):  # the bubble's padding above them, the text below
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, y))
        assert view.image_viewer is None and view.selected_message_id() == window.controller.transcript[0].id
    with qtbot.waitSignal(view.image_opened):  # just inside the first one's top edge
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, thumbnails_top + 2))


@pytest.mark.qt_log_ignore("This plugin does not support grabbing the keyboard")  # the offscreen plugin, for a popup
def test_enter_on_the_selected_message_and_its_menu_open_the_viewer(window, qtbot):
    view = window.transcript_view
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Home)
    assert view.selected_message_id() == window.controller.transcript[0].id
    with qtbot.waitSignal(view.image_opened):
        qtbot.keyClick(view, Qt.Key.Key_Return)
    assert view.image_viewer.windowTitle() == "red.png (1 of 2)"
    view.image_viewer.close()

    chosen = []

    def choose_view_images() -> None:
        menu = QApplication.activePopupWidget()
        if isinstance(menu, QMenu):
            action = next(a for a in menu.actions() if a.text() == "View images\u2026")
            chosen.append(action.text())
            menu.close()
            action.trigger()

    QTimer.singleShot(0, choose_view_images)
    QApplication.sendEvent(view, QContextMenuEvent(QContextMenuEvent.Reason.Keyboard, QPoint(2, 2), view.mapToGlobal(QPoint(2, 2))))
    assert chosen and view.image_viewer is not None and view.image_viewer.number == 0

    qtbot.keyClick(view, Qt.Key.Key_Down)  # the reply has no image: Enter opens nothing
    view.image_viewer.close()
    qtbot.waitUntil(lambda: view.image_viewer is None, timeout=timeout_ms(5))
    qtbot.keyClick(view, Qt.Key.Key_Return)
    assert view.image_viewer is None


def test_edit_and_resend_keeps_the_images_and_adds_the_ones_attached_while_editing(window, qtbot):
    question = window.controller.transcript[0]
    kept = [a.path.read_bytes() for a in question.attachments]
    window.begin_edit(question.id)
    assert "images you attach are added" in window.composer.edit_label.text()
    added = check_image(encoded(16, 16, "JPEG", (20, 200, 20)), "green.jpg")
    window.composer.attachments.add(added)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=timeout_ms(5)):  # no engine: the reply fails
        window._on_composer_edit_submitted(question.id, "And now?")
    resent = window.controller.transcript[0]
    assert resent.content == "And now?" and resent.id != question.id
    assert [a.name for a in resent.attachments] == ["red.png", "big blue.png", "green.jpg"]
    assert [a.path.read_bytes() for a in resent.attachments] == [*kept, added.data]
    assert window.store.get_message(resent.id).attachments == resent.attachments
    assert window.composer.attachments.sources() == []
