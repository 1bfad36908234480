"""What a screen reader and a keyboard user get, through Qt's own accessibility interfaces: every
interactive widget has a name (checked generically, so it covers widgets added later), each
message says its role, text, status and time, a reply in progress is announced as "generating,
canvas N", every action is reachable from the keyboard; message timestamps; Help ▸ About."""

from __future__ import annotations

import importlib.metadata
import platform

import pytest
from PySide6.QtCore import QEvent, QPoint, Qt, QTimer
from PySide6.QtGui import QAccessible, QAction, QContextMenuEvent, QHelpEvent
from PySide6.QtWidgets import QApplication, QMenu, QToolTip, QWidget

from app.chat.messages import Conversation, Message
from app.chat.qt_models import MessageRole
from app.chat.store import ChatStore
from app.settings import Settings
from app.window import about as about_module
from app.window.accessibility import accessible_name, is_interactive, unnamed_controls
from app.window.main_window import MainWindow
from app.worker.engine_client import EngineClient
from engine import paths
from tests.conftest import timeout_ms
from tests.gui.window_helpers import TEST_SETTINGS, ignore_offscreen_limits, wait_model_loaded

pytestmark = [ignore_offscreen_limits]


@pytest.fixture
def window(qtbot):
    """The real window with no worker started, on a store holding one finished exchange."""
    store = ChatStore()
    chat = store.create_conversation("Peru")
    store.add_message(Message(role="user", content="What is the capital of Peru?", conversation_id=chat.id))
    store.add_message(
        Message(role="assistant", content="The capital of Peru is Lima.", conversation_id=chat.id, stats={"prompt_tokens": 20, "new_tokens": 9})
    )
    main = MainWindow(Settings(), store, EngineClient())
    qtbot.addWidget(main)
    main.show()
    qtbot.waitExposed(main)
    yield main
    main.close()
    store.close()


def _all_windows_of(main) -> list[QWidget]:
    """The main window and every dialog it can open."""
    main.open_settings()
    main.open_local_server()
    main.open_about()
    main.banner.show_crash(1, ["a log line"], False, "it crashed")
    dialogs = [w for w in main.findChildren(QWidget) if w.isWindow()]
    return [main, *dialogs]


def test_every_interactive_widget_has_an_accessible_name(window):
    windows = _all_windows_of(window)
    checked = [w for root in windows for w in [root, *root.findChildren(QWidget)] if is_interactive(w)]
    assert len(checked) > 30  # the walk reaches the panel, the composer, the sidebar and the dialogs
    missing = [line for root in windows for line in unnamed_controls(root)]
    assert not missing, "widgets a screen reader cannot name:\n" + "\n".join(missing)


def test_the_walk_catches_an_unnamed_control(window):
    from PySide6.QtWidgets import QLineEdit, QToolButton

    QLineEdit(window.chat_panel)  # neither a name nor a label: what a careless new widget looks like
    icon_only = QToolButton(window.composer)
    assert len(unnamed_controls(window)) == 2
    icon_only.setAccessibleName("Attach a file")
    assert len(unnamed_controls(window)) == 1


def test_each_message_tells_its_role_text_status_and_time(window):
    view = window.transcript_view
    interface = QAccessible.queryAccessibleInterface(view)
    assert interface.text(QAccessible.Text.Name) == "Chat messages"
    items = [interface.child(i) for i in range(interface.childCount())]
    names = [item.text(QAccessible.Text.Name) for item in items if item is not None]
    assert names == ["You: What is the capital of Peru?", "Assistant: The capital of Peru is Lima."]
    described = [item.text(QAccessible.Text.Description) for item in items if item is not None]
    assert described[0].startswith("You message, finished, sent ") and "today" in described[0]
    assert described[1].startswith("Assistant message, finished, written ")


def test_a_message_shows_its_time_on_hover(window, qtbot):
    view = window.transcript_view
    index = window.transcript_model.index(0, 0)
    message = index.data(MessageRole.MESSAGE)
    tooltip = index.data(Qt.ItemDataRole.ToolTipRole)
    import time

    assert tooltip == f"Sent {time.strftime('%H:%M', time.localtime(message.created))} today"
    rect = view.visualRect(index)
    event = QHelpEvent(QEvent.Type.ToolTip, rect.center(), view.viewport().mapToGlobal(rect.center()))
    QApplication.sendEvent(view.viewport(), event)
    qtbot.waitUntil(lambda: QToolTip.text() == tooltip, timeout=timeout_ms(5))
    QToolTip.hideText()


def test_every_action_is_reachable_from_the_keyboard(window):
    menus = [a.menu() for a in window.menuBar().actions() if a.menu() is not None]
    assert all("&" in menu.title() for menu in menus)  # Alt + letter opens each menu
    in_menus = {action for menu in menus for action in menu.actions()}
    for action in window.findChildren(QAction):
        if action.parent() is not window or action.isSeparator() or action.menu() is not None:
            continue
        assert action in in_menus or not action.shortcut().isEmpty(), f"{action.text()!r} has no keyboard route"


def test_tab_reaches_every_visible_control(window, qtbot):
    window.activateWindow()
    window.composer.edit.setFocus()
    qtbot.waitUntil(lambda: window.composer.edit.hasFocus(), timeout=timeout_ms(5))
    visited = set()
    for _ in range(120):  # Tab presses, as a keyboard user would
        focused = QApplication.focusWidget()
        visited.add(focused)
        qtbot.keyClick(focused, Qt.Key.Key_Tab)
    wanted = [
        w
        for w in window.findChildren(QWidget)
        if is_interactive(w) and w.isVisible() and w.isEnabled() and w.window() is window
        and w.focusPolicy() != Qt.FocusPolicy.NoFocus
    ]
    unreachable = [f"{type(w).__name__} {accessible_name(w)!r}" for w in wanted if w not in visited and w.focusProxy() not in visited]
    assert not unreachable, unreachable
    assert window.chat_panel.system_prompt in visited and window.transcript_view in visited


@pytest.mark.qt_log_ignore("This plugin does not support grabbing the keyboard")  # the offscreen plugin, for a popup
def test_keyboard_picks_a_message_and_opens_its_menu(window, qtbot):
    view = window.transcript_view
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Home)
    qtbot.keyClick(view, Qt.Key.Key_Down)
    answer = window.controller.transcript[1]
    assert view.selected_message_id() == answer.id
    shown = []

    def read_and_close_the_menu() -> None:
        menu = QApplication.activePopupWidget()
        if isinstance(menu, QMenu):
            shown.append([action.text() for action in menu.actions()])
            menu.close()

    QTimer.singleShot(0, read_and_close_the_menu)
    # What Qt sends the focused widget for the Menu key or Shift+F10 (the position: its corner).
    QApplication.sendEvent(view, QContextMenuEvent(QContextMenuEvent.Reason.Keyboard, QPoint(2, 2), view.mapToGlobal(QPoint(2, 2))))
    assert shown and "Regenerate" in shown[0] and "Replay the denoising" in shown[0]


def test_the_panel_collapses_and_remembers_it(window, qtbot):
    assert window.chat_panel.isVisible()
    splitter = window.centralWidget()
    transcript_width = splitter.sizes()[1]
    assert transcript_width >= 500, splitter.sizes()  # the panel does not crush the transcript
    qtbot.keyClick(window, Qt.Key.Key_F9)
    assert not window.chat_panel.isVisible() and not window.settings.chat_panel_open
    from app.settings import load_settings

    assert load_settings().chat_panel_open is False
    window.chat_panel.close_button.click() if window.chat_panel.isVisible() else window.chat_panel_action.trigger()
    assert window.chat_panel.isVisible()


def test_about_lists_versions_and_opens_the_log_folder(window, monkeypatch):
    opened = []
    monkeypatch.setattr(about_module.QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    dialog = window.open_about()
    facts = dialog.facts
    assert facts["Canvas Chat"] == importlib.metadata.version("canvas-chat")
    assert facts["Python"] == platform.python_version()
    assert facts["torch (in the engine)"] == "not loaded" and facts["transformers (in the engine)"] == "not loaded"
    assert facts["Log folder"] == str(paths.log_dir())
    assert "Qt" in facts and facts["PySide6"]
    dialog.open_logs_button.click()
    assert [url.toLocalFile() for url in opened] == [str(paths.log_dir())]
    assert window.about_action in [a for m in window.menuBar().actions() if m.menu() for a in m.menu().actions()]


@pytest.mark.slow
def test_a_reply_in_progress_is_announced_by_canvas_not_by_its_noise(qtbot, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CANVAS_CHAT_TEST_FORCE_REPLY", "Denoising turns noise into text, one canvas at a time, step by step.")
    monkeypatch.setenv("CANVAS_CHAT_TEST_STEP_DELAY", "0.03")
    store = ChatStore()
    main = MainWindow(TEST_SETTINGS, store, EngineClient(restart_delays_s=(0.05, 0.1, 0.2)))
    main.show()
    qtbot.waitExposed(main)
    try:
        assert main.start_engine(str(tiny_model_dir))
        wait_model_loaded(qtbot, main)
        announced: list[tuple[str, str]] = []

        def record(*_args) -> None:
            message = main.controller.transcript.last()
            if message is None or message.status != "streaming" or message.draft is None:
                return
            item = QAccessible.queryAccessibleInterface(main.transcript_view).child(len(main.controller.transcript) - 1)
            name = item.text(QAccessible.Text.Name)
            # Exactly the canvas and the committed text: nothing of the open canvas (its noise).
            expected = f"Assistant, generating, canvas {message.draft.canvas_index + 1}"
            assert name == expected + (f": {message.content}" if message.content else ""), name
            announced.append((name, main.transcript_view.accessibleDescription()))

        main.transcript_model.dataChanged.connect(record)
        with qtbot.waitSignal(main.controller.reply_finished, timeout=timeout_ms(60)):
            main.send("Tell me about canvases")
        main.transcript_model.dataChanged.disconnect(record)
        assert announced
        assert announced[0] == ("Assistant, generating, canvas 1", "Generating, canvas 1")
        descriptions = {description for _, description in announced}
        assert {"Generating, canvas 1", "Generating, canvas 2", "Generating, canvas 3"} <= descriptions
        assert main.transcript_view.accessibleDescription().startswith("The messages of the open chat")

        info = main.client.model_info
        facts = main.open_about().facts
        assert facts["torch (in the engine)"] == info.torch_version == importlib.metadata.version("torch")
        assert facts["transformers (in the engine)"] == importlib.metadata.version("transformers")
    finally:
        main.close()
        main.client.shutdown()
        store.close()
        main.deleteLater()


def test_the_panel_and_meter_follow_a_switch_to_a_server(window, monkeypatch):
    from app.remote.backend import RemoteBackend
    from app.remote.server import RemoteServer
    from engine.protocol import ModelLoaded

    local_model = ModelLoaded("r", "demo", "/demo", "cpu", "none", 16, 1000, 0.1, True, context_window=4096)
    monkeypatch.setattr(EngineClient, "model_info", property(lambda self: local_model))
    panel, meter = window.chat_panel, window.context_meter
    window.controller.open_conversation(window.controller.current_conversation_id)
    assert meter.label.text().endswith("/ 4,096")
    assert "Local engine on this PC" in panel.backend_label.text()
    backend = RemoteBackend(RemoteServer("http://gpu-box:8000/v1", "gemma"), window)
    assert window.controller.use_backend(backend)
    assert "Remote server" in panel.backend_label.text() and "gemma at gpu-box:8000" in panel.model_label.text()
    assert meter.label.text().endswith("/ ?")  # a server's window is not known
    assert window.controller.use_backend(window.client)
    assert "Local engine on this PC" in panel.backend_label.text()
