"""The window's parts without a worker: canvas drawing, Markdown, composer keys, settings dialog,
theme, copy buttons, engine state display, and the GUI process never importing torch."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.transcript.canvas_paint import FADE_LEVELS, FADE_S, NOISE_CELL, NOISE_GLYPH, CanvasAnimation, layout_canvas
from app.chat.messages import DraftState, Message
from app.window.composer import Composer
from app.worker.engine_client import EngineClient, EngineState
from app.window.main_window import MainWindow
from app.transcript.markdown_render import MarkdownRenderer
from app.settings import PRESETS, Settings
from app.window.settings_dialog import SettingsDialog
from app.chat.store import ChatStore
from app.theme import DARK, LIGHT, resolve_theme
from app.transcript.delegate import stats_line
from tests.conftest import PYTHON, python_env
from tests.gui.window_helpers import ignore_offscreen_limits

NOISE = ("zq", "#@", "xx")


def test_unsettled_positions_show_neutral_glyphs_never_the_noise(qapp):
    animation = CanvasAnimation()
    animation.apply(0, 2, 8, [" Hello", NOISE[0], " world", NOISE[1]], [True, False, True, False], [0, 3, 2, 3], now=10.0)
    assert [s.text for s in animation.segments()] == [" Hello", NOISE_GLYPH, " world", NOISE_GLYPH]
    from PySide6.QtGui import QFont

    layout, height = layout_canvas(animation, QFont(), 400, LIGHT, now=10.0)
    assert layout.text() == " Hello" + NOISE_CELL + " world" + NOISE_CELL
    assert height > 0
    assert not any(noise in layout.text() for noise in NOISE)
    assert animation.counter_text() == "canvas 1 \u00b7 step 3/8"


def test_a_settled_special_token_draws_as_a_blank_never_its_markup(qapp):
    """An older engine, or a replay stored before pieces skipped special tokens, may still send
    "<pad>" or "<|channel>" as a piece: the canvas draws a blank for it."""
    from PySide6.QtGui import QFont

    animation = CanvasAnimation()
    pieces = ["The", "<pad>", "<|channel>", " cat", "<turn|>", "<unused7>", " a<b>c"]
    animation.apply(0, 3, 8, pieces, [True] * 6 + [True], [0] * 7, now=1.0)
    layout, _ = layout_canvas(animation, QFont(), 400, LIGHT, now=1.0)
    assert layout.text() == "The cat a<b>c"
    assert "".join(s.text for s in animation.segments()) == "The cat a<b>c"


def test_settled_tokens_fade_in_once_and_restart_when_they_change():
    animation = CanvasAnimation()
    animation.apply(0, 0, 8, ["a", "b"], [True, False], [0, 0], now=1.0)
    assert animation.fade_level(0, 1.0) == 0 and animation.is_fading(1.0)
    animation.apply(0, 1, 8, ["a", "c"], [True, True], [0, 0], now=1.0 + FADE_S)
    assert animation.fade_level(0, 1.0 + FADE_S) == FADE_LEVELS  # kept its settle time
    assert animation.fade_level(1, 1.0 + FADE_S) == 0  # newly settled
    animation.apply(0, 2, 8, ["a", "d"], [True, True], [0, 0], now=5.0)
    assert animation.fade_level(1, 5.0) == 0  # a settled token that changed fades in again
    assert not animation.is_fading(5.0 + FADE_S)
    animation.apply(1, 0, 8, ["e"], [True], [0], now=6.0)
    assert animation.fade_level(0, 6.0) == 0 and animation.canvas_index == 1


def test_markdown_renders_blocks_code_with_copy_and_keeps_raw_html_as_text():
    renderer = MarkdownRenderer(LIGHT)
    rendered = renderer.render(
        "# Title\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "See [docs](https://example.org) and `x = 1`.\n\n```python\ndef f():\n    return 1\n```\n\n<b>raw</b>"
    )
    html = rendered.html
    assert "<h1>" in html and "<li>" in html and "<table" in html and 'href="https://example.org"' in html
    assert "x = 1" in html and "<code" in html
    assert 'href="copy-code:0"' in html
    assert rendered.code_blocks == ["def f():\n    return 1\n"]
    assert "<span style=" in html  # Pygments colours
    assert "&lt;b&gt;raw&lt;/b&gt;" in html


def test_stats_line_reads_like_the_issue_asks():
    line = stats_line({"time_to_first_draft_s": 0.213, "tokens_per_s": 48.25, "tokens_per_forward": 3.2, "steps_per_canvas": 5})
    assert line == "0.21 s to first draft \u00b7 48.2 tok/s \u00b7 3.2 tok/forward \u00b7 5.0 steps/canvas"
    assert stats_line(None) == ""


def test_composer_enter_sends_shift_enter_adds_a_line_escape_stops(qtbot):
    composer = Composer()
    qtbot.addWidget(composer)
    sent = []
    composer.sig_send_requested.connect(sent.append)
    qtbot.keyClicks(composer.edit, "first line")
    qtbot.keyClick(composer.edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(composer.edit, "second line")
    assert composer.text() == "first line\nsecond line" and not sent
    qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
    assert sent == ["first line\nsecond line"] and composer.text() == ""

    composer.set_generating(True)
    qtbot.keyClicks(composer.edit, "queued")
    with qtbot.assertNotEmitted(composer.sig_send_requested):
        qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
    assert not composer.send_button.isEnabled() and composer.stop_button.isEnabled()
    with qtbot.waitSignal(composer.sig_stop_requested, timeout=1000):
        qtbot.keyClick(composer.edit, Qt.Key.Key_Escape)

    composer.set_generating(False)
    edits = []
    composer.sig_edit_submitted.connect(lambda message_id, text: edits.append((message_id, text)))
    composer.begin_edit("m1", "old text")
    assert composer.send_button.text() == "Resend"
    composer.set_text("new text")
    qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
    assert edits == [("m1", "new text")] and not composer.editing_message_id


def test_settings_dialog_presets_fill_raw_values_and_edits_make_custom(qtbot):
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    dialog.preset.setCurrentIndex(dialog.preset.findData("fast"))
    assert dialog.steps.value() == PRESETS["fast"].max_denoising_steps
    assert dialog.edited_settings().preset == "fast"
    dialog.steps.setValue(17)
    assert dialog.preset.currentData() == "custom"
    dialog.t_min.setValue(0.9)
    dialog.t_max.setValue(0.5)
    assert not dialog.ok_button.isEnabled() and not dialog.problems.isHidden()
    dialog.t_max.setValue(1.0)
    dialog.system_prompt.setPlainText("Be brief.")
    dialog.theme.setCurrentIndex(dialog.theme.findData("dark"))
    dialog.reduced_motion.setChecked(True)
    with qtbot.waitSignal(dialog.settings_accepted, timeout=1000) as accepted:
        qtbot.mouseClick(dialog.ok_button, Qt.MouseButton.LeftButton)
    settings = accepted.args[0]
    assert (settings.system_prompt, settings.theme, settings.reduced_motion) == ("Be brief.", "dark", True)
    assert (settings.max_denoising_steps, settings.preset, settings.t_max) == (17, "custom", 1.0)


def test_theme_follows_the_os_unless_forced(qapp):
    scheme = QGuiApplication.styleHints().colorScheme()
    assert resolve_theme("system") is (DARK if scheme == Qt.ColorScheme.Dark else LIGHT)
    assert resolve_theme("dark") is DARK and resolve_theme("light") is LIGHT


@pytest.fixture
def window(qtbot):
    store = ChatStore()
    client = EngineClient()
    window = MainWindow(Settings(), store, client)
    qtbot.addWidget(window)
    window.show()
    yield window
    window.close()
    store.close()


@ignore_offscreen_limits
def test_engine_state_is_always_shown_with_load_progress(window):
    status = window.engine_status
    assert status.isVisible() and status.label.text() == "Engine stopped"
    window._on_client_state_changed(EngineState.LOADING)
    window._on_client_load_progressed(type("P", (), {"fraction": 0.4, "message": "Loading weights"})())
    assert status.progress.isVisible() and status.progress.value() == 40
    assert "Loading weights" in status.label.text()
    window._on_client_state_changed(EngineState.GENERATING)
    assert not status.progress.isVisible() and status.label.text() == "Generating\u2026"


@ignore_offscreen_limits
def test_copy_buttons_put_code_and_messages_on_the_clipboard(window, qtbot):
    conversation = window.controller.new_conversation()
    reply = Message("assistant", "Run:\n\n```sh\necho hi\n```\n", conversation_id=conversation.id)
    window.controller.transcript.append(reply)
    view = window.transcript_view
    index = view.index_of_message(reply.id)
    from PySide6.QtCore import QPersistentModelIndex

    with qtbot.waitSignal(view.copied, timeout=1000):
        view.open_anchor(QPersistentModelIndex(index), "copy-code:0")
    assert QGuiApplication.clipboard().text() == "echo hi\n"
    window.copy_last_reply()
    assert QGuiApplication.clipboard().text() == reply.content


@ignore_offscreen_limits
def test_dark_theme_and_reduced_motion_apply_at_once(window):
    window.apply_settings(dataclasses.replace(window.settings, theme="dark", reduced_motion=True), save=False)
    assert window.colors is DARK and window.transcript_view.delegate.colors is DARK
    assert window.transcript_view.delegate.reduced_motion
    assert QGuiApplication.palette().window().color().name() == DARK.window


@ignore_offscreen_limits
def test_streaming_row_draws_the_open_canvas_from_the_message_draft(window, qtbot):
    conversation = window.controller.new_conversation()
    reply = Message("assistant", "", conversation_id=conversation.id, status="streaming")
    window.controller.transcript.append(reply)
    draft = DraftState(0, 1, 8, (" Hi", "qq", " there"), (True, False, True), (0, 3, 1))
    window.controller.transcript.update(reply.id, draft=draft)
    snapshot = window.transcript_view.streaming_snapshot(reply.id)
    assert snapshot.drawn_text == " Hi" + NOISE_GLYPH + " there"
    assert window.transcript_view.frame_timer_active()
    qtbot.waitUntil(lambda: window.transcript_view.streaming_snapshot(reply.id).paints > 0, timeout=2000)
    window.controller.transcript.update(reply.id, draft=None, content=" Hi you there")
    assert window.transcript_view.streaming_snapshot(reply.id).canvas_index == -1
    window.controller.transcript.update(reply.id, status="finished")
    assert not window.transcript_view.is_streaming(reply.id)
    qtbot.waitUntil(lambda: not window.transcript_view.frame_timer_active(), timeout=2000)


def test_the_gui_process_never_imports_torch_or_transformers():
    code = (
        "import sys, os; os.environ['QT_QPA_PLATFORM']='offscreen'\n"
        "import app.__main__, app.window.main_window, app.self_test, app.transcript.view\n"
        "from PySide6.QtWidgets import QApplication; a = QApplication([])\n"
        "from app.window.main_window import MainWindow; from app.chat.store import ChatStore\n"
        "from app.worker.engine_client import EngineClient; from app.settings import Settings\n"
        "w = MainWindow(Settings(), ChatStore(), EngineClient()); w.show(); a.processEvents()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print(bad); w.close(); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([PYTHON, "-c", code], env=python_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@ignore_offscreen_limits
def test_model_setup_action_is_disabled_when_the_module_is_missing(qtbot, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "app.setup.dialog" else real_find_spec(name, *args)
    )
    store = ChatStore()
    window = MainWindow(Settings(), store, EngineClient())
    qtbot.addWidget(window)
    assert not window.model_setup_action.isEnabled()
    window.close()
    store.close()


@ignore_offscreen_limits
def test_model_setup_opens_from_the_model_menu(window):
    assert window.model_setup_action.isEnabled()
    window.model_setup_action.trigger()
    dialog = window._model_setup_window
    assert dialog is not None and dialog.isVisible()
    dialog.shutdown()
    dialog.close()


@ignore_offscreen_limits
def test_hovering_a_message_shows_its_links_and_clicking_edit_asks_for_an_edit(window, qtbot):
    conversation = window.controller.new_conversation()
    question = Message("user", "What is a canvas?", conversation_id=conversation.id)
    answer = Message("assistant", "A block of tokens.", conversation_id=conversation.id)
    window.controller.transcript.append(question)
    window.controller.transcript.append(answer)
    view = window.transcript_view
    qtbot.waitUntil(lambda: view.visualRect(view.index_of_message(question.id)).height() > 0, timeout=2000)
    assert view.shows_actions(answer.id) and not view.shows_actions(question.id)  # the last message always
    index = view.index_of_message(question.id)
    bubble = view.delegate.row_geometry(index).bubble
    qtbot.mouseMove(view.viewport(), bubble.center())
    assert view.shows_actions(question.id)
    edit_link = view.delegate.row_geometry(index).links["Edit"]
    with qtbot.waitSignal(view.sig_edit_requested, timeout=1000) as requested:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=edit_link.center())
    assert requested.args == [question.id]
    assert window.composer.editing_message_id == question.id and window.composer.text() == "What is a canvas?"


@ignore_offscreen_limits
def test_the_app_reopens_the_last_chat_on_start(qtbot):
    with ChatStore() as store:
        older = store.create_conversation("Older chat")
        store.add_message(Message("user", "An old question", conversation_id=older.id))
        latest = store.create_conversation("Latest chat")
        store.add_message(Message("user", "What is 3 + 4?", conversation_id=latest.id))
        store.add_message(Message("assistant", "3 + 4 = 7.", conversation_id=latest.id))
        store.touch_conversation(older.id, 1.0)  # long ago
    store = ChatStore()
    window = MainWindow(Settings(), store, EngineClient())
    qtbot.addWidget(window)
    window.show()
    assert window.controller.current_conversation_id == latest.id
    assert [m.content for m in window.controller.transcript] == ["What is 3 + 4?", "3 + 4 = 7."]
    assert window.transcript_view.isVisible() and not window.empty_label.isVisible()
    assert window.windowTitle().startswith("Latest chat")
    window.close()
    store.close()


@ignore_offscreen_limits
def test_the_empty_chat_offers_clickable_examples_when_the_demo_is_loaded(window, qtbot):
    from app.window.main_window import DEMO_EXAMPLE_PROMPTS
    from engine.protocol import ModelLoaded

    def loaded(is_demo):
        info = ModelLoaded("l", "demo-model", "/demo-model", "cpu", "none", 16, 1_554_960, 0.2, is_demo=is_demo)
        window.client._model_info = info
        window._on_client_model_loaded(info)

    loaded(is_demo=False)
    assert "ask:" not in window.empty_label.text()
    loaded(is_demo=True)
    text = window.empty_label.text()
    assert "This is a tiny demo model" in text
    assert all(f">{prompt}</a>" in text for prompt in DEMO_EXAMPLE_PROMPTS)
    for skill_word in ("capital", "colour", "Reverse", "How many words", "+", "can you do"):  # one per skill
        assert any(skill_word in prompt for prompt in DEMO_EXAMPLE_PROMPTS), skill_word
    window.empty_label.linkActivated.emit("ask:2")  # what a click on the third example does
    questions = [m.content for m in window.controller.transcript if m.role == "user"]
    assert questions == [DEMO_EXAMPLE_PROMPTS[2]]
    qtbot.waitUntil(lambda: not window.controller.is_generating, timeout=5000)
