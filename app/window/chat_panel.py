"""The chat's settings panel on the right of the window (collapsible, like LM Studio's): model and
backend in use, system prompt, preset and raw denoising settings, seed, reply length, thinking."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import dataclasses
import html
import logging
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.chat.backend import answered_by
from app.chat.chat_settings import ChatSettings
from app.settings import save_settings
from app.window.seed_edit import SeedEdit
from engine.protocol import SETTING_RANGES

log = logging.getLogger("canvas_chat.chat_panel")

PRESET_LABELS = {"fast": "Fast", "balanced": "Balanced", "quality": "Quality", "custom": "Custom"}
PANEL_WIDTH = 280
BACKEND_LOCAL = "Local engine on this PC"
BACKEND_REMOTE = "Remote server (OpenAI-compatible API)"


def _bounds(name: str) -> tuple:
    accepted = SETTING_RANGES[name]
    return accepted.low, accepted.high


class ChatPanel(QFrame):
    """Edits the open chat's settings through `controller.set_chat_settings` as the user types;
    values the engine would refuse are shown as problems and not applied."""

    sig_close_requested = Signal()

    def __init__(self, controller, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("chatPanel")
        self.setAccessibleName("Chat settings panel")
        self.setAccessibleDescription("Settings saved with the open chat and used by its next reply")
        self.controller = controller
        self._loading = False

        self.title = QLabel("<b>This chat</b>", self)
        self.close_button = QToolButton(self)
        self.close_button.setObjectName("chatPanelCloseButton")
        self.close_button.setText("\u00d7")
        self.close_button.setToolTip("Hide the chat settings panel (F9)")
        self.close_button.setAccessibleName("Hide the chat settings panel")
        self.close_button.clicked.connect(self.sig_close_requested)

        self.model_label = QLabel(self)
        self.model_label.setObjectName("chatPanelModel")
        self.model_label.setWordWrap(True)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.backend_label = QLabel(self)
        self.backend_label.setObjectName("chatPanelBackend")
        self.backend_label.setWordWrap(True)

        self.system_prompt = QPlainTextEdit(self)
        self.system_prompt.setObjectName("chatSystemPrompt")
        self.system_prompt.setPlaceholderText("Instructions the model reads before this chat")
        self.system_prompt.setTabChangesFocus(True)
        self.system_prompt.setFixedHeight(96)
        self.system_prompt.setAccessibleName("System prompt")
        self.system_prompt.setAccessibleDescription("Changing it makes the next reply read the whole chat again")

        self.preset = QComboBox(self)
        self.preset.setObjectName("chatPresetCombo")
        for name in ("fast", "balanced", "quality", "custom"):
            self.preset.addItem(PRESET_LABELS[name], name)
        self.preset.setAccessibleName("Preset")
        self.steps = QSpinBox(self)
        self.steps.setObjectName("chatStepsSpin")
        self.steps.setRange(*_bounds("max_denoising_steps"))
        self.steps.setAccessibleName("Denoising steps per canvas")
        self.entropy_bound = QDoubleSpinBox(self)
        self.entropy_bound.setObjectName("chatEntropySpin")
        self.entropy_bound.setRange(*_bounds("entropy_bound"))
        self.entropy_bound.setDecimals(3)
        self.entropy_bound.setSingleStep(0.05)
        self.entropy_bound.setAccessibleName("Entropy bound")
        self.entropy_bound.setToolTip("How uncertain a token may be and still be accepted in a step (larger: faster)")
        self.t_min = QDoubleSpinBox(self)
        self.t_min.setObjectName("chatTMinSpin")
        self.t_min.setRange(*_bounds("t_min"))
        self.t_min.setSingleStep(0.05)
        self.t_min.setAccessibleName("Temperature at the last step (t_min)")
        self.t_max = QDoubleSpinBox(self)
        self.t_max.setObjectName("chatTMaxSpin")
        self.t_max.setRange(*_bounds("t_max"))
        self.t_max.setSingleStep(0.05)
        self.t_max.setAccessibleName("Temperature at the first step (t_max)")
        self.seed = SeedEdit(self)
        self.seed.setObjectName("chatSeedEdit")
        self.seed.setAccessibleName("Seed")
        self.seed.setAccessibleDescription("Empty: a new random seed for every reply")
        self.max_new_tokens = QSpinBox(self)
        self.max_new_tokens.setObjectName("chatMaxTokensSpin")
        self.max_new_tokens.setRange(*_bounds("max_new_tokens"))
        self.max_new_tokens.setSingleStep(256)
        self.max_new_tokens.setSuffix(" tokens")
        self.max_new_tokens.setAccessibleName("Reply length at most (max new tokens)")
        self.thinking = QCheckBox("Think first", self)
        self.thinking.setObjectName("chatThinkingCheck")
        self.thinking.setToolTip("The model reasons in its thought channel before answering")
        self.reset_button = QPushButton("Reset to the defaults", self)
        self.reset_button.setObjectName("chatResetButton")
        self.reset_button.setToolTip("Use the defaults from Settings for this chat")

        self.problems = QLabel(self)
        self.problems.setObjectName("chatPanelProblems")
        self.problems.setWordWrap(True)
        self.problems.setStyleSheet("color: #c0262d;")
        self.problems.hide()

        header = QHBoxLayout()
        header.addWidget(self.title, 1)
        header.addWidget(self.close_button)
        form_holder = QWidget(self)
        column = QVBoxLayout(form_holder)
        column.setContentsMargins(0, 0, 4, 0)
        column.setSpacing(6)
        column.addWidget(self.model_label)
        column.addWidget(self.backend_label)
        prompt_label = QLabel("System prompt", self)
        prompt_label.setBuddy(self.system_prompt)
        column.addWidget(prompt_label)
        column.addWidget(self.system_prompt)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Preset", self.preset)
        form.addRow("Denoising steps", self.steps)
        form.addRow("Entropy bound", self.entropy_bound)
        form.addRow("t_min", self.t_min)
        form.addRow("t_max", self.t_max)
        form.addRow("Seed", self.seed)
        form.addRow("Max new tokens", self.max_new_tokens)
        column.addLayout(form)
        column.addWidget(self.thinking)
        column.addWidget(self.problems)
        column.addWidget(self.reset_button)
        column.addStretch(1)

        scroll = QScrollArea(self)
        scroll.setObjectName("chatPanelScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(form_holder)
        scroll.setAccessibleName("Chat settings")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 6, 8)
        layout.addLayout(header)
        layout.addWidget(scroll, 1)
        self.setMinimumWidth(230)
        self.setMaximumWidth(420)

        self.show_model(None)
        self.show_settings(controller.chat_settings)
        controller.chat_settings_changed.connect(self.show_settings)
        self.system_prompt.textChanged.connect(self._on_field_edited)
        self.preset.currentIndexChanged.connect(self._on_preset_current_index_changed)
        for spin in (self.steps, self.entropy_bound, self.t_min, self.t_max, self.max_new_tokens):
            spin.valueChanged.connect(self._on_field_edited)
        self.seed.textChanged.connect(self._on_field_edited)
        self.thinking.toggled.connect(self._on_field_edited)
        self.reset_button.clicked.connect(self._on_reset_button_clicked)

    # -- showing

    def show_settings(self, chat_settings: ChatSettings) -> None:
        """Shows a chat's settings (the fields the user is typing in keep their cursor)."""
        if not self._loading and self.shown_settings() == chat_settings:
            self._show_problems([])
            return
        self._loading = True
        if self.system_prompt.toPlainText() != chat_settings.system_prompt:
            self.system_prompt.setPlainText(chat_settings.system_prompt)
        self.preset.setCurrentIndex(self.preset.findData(chat_settings.preset))
        self.steps.setValue(chat_settings.max_denoising_steps)
        self.entropy_bound.setValue(chat_settings.entropy_bound)
        self.t_min.setValue(chat_settings.t_min)
        self.t_max.setValue(chat_settings.t_max)
        if self.seed.seed() != chat_settings.seed:
            self.seed.set_seed(chat_settings.seed)
        self.max_new_tokens.setValue(chat_settings.max_new_tokens)
        self.thinking.setChecked(chat_settings.thinking)
        self._loading = False
        self._show_problems([])

    def show_model(self, info, backend: str = BACKEND_LOCAL) -> None:
        """The loaded model (a ModelLoaded event) or None."""
        if info is None:
            shown = "No model loaded"
        else:
            name = "Demo model (toy skills only)" if info.is_demo else Path(info.model).name or info.model
            weights = "no quantization" if info.quantization in ("", "none") else info.quantization
            shown = f"{html.escape(name)} \u00b7 {html.escape(info.device)} \u00b7 {html.escape(weights)}"
        self.model_label.setText(f"<b>Model</b><br>{shown}")
        self.model_label.setAccessibleName(f"Model: {shown}" if info is None else f"Model: {name}, {info.device}")
        self.backend_label.setText(f"<b>Backend</b><br>{html.escape(backend)}")
        self.backend_label.setAccessibleName(f"Backend: {backend}")

    def show_remote(self, label: str) -> None:
        """Replies come from a server (label: app.chat.backend.answered_by, "Remote · model at host")."""
        model = label.split(" \u00b7 ", 1)[-1]
        self.model_label.setText(f"<b>Model</b><br>{html.escape(model)}")
        self.model_label.setAccessibleName(f"Model: {model}")
        self.backend_label.setText(f"<b>Backend</b><br>{BACKEND_REMOTE}")
        self.backend_label.setAccessibleName(f"Backend: {BACKEND_REMOTE}")

    def shown_settings(self) -> ChatSettings:
        """The settings as the panel shows them now (maybe with problems)."""
        base = dataclasses.replace(
            self.controller.chat_settings,
            system_prompt=self.system_prompt.toPlainText(),
            max_new_tokens=self.max_new_tokens.value(),
            thinking=self.thinking.isChecked(),
        )
        return base.with_sampling(
            max_denoising_steps=self.steps.value(),
            entropy_bound=round(self.entropy_bound.value(), 3),
            t_min=round(self.t_min.value(), 2),
            t_max=round(self.t_max.value(), 2),
            seed=self.seed.seed(),
        )

    def _show_problems(self, problems: list[str]) -> None:
        self.problems.setText("Not applied: " + "; ".join(problems) if problems else "")
        self.problems.setVisible(bool(problems))

    # -- editing

    def _apply(self, chat_settings: ChatSettings) -> None:
        problems = chat_settings.problems()  # the seed's range included (SETTING_RANGES)
        self._show_problems(problems)
        if not problems:
            self.controller.set_chat_settings(chat_settings)

    def _on_field_edited(self, *_args) -> None:
        if self._loading:
            return
        edited = self.shown_settings()
        self._loading = True
        self.preset.setCurrentIndex(self.preset.findData(edited.preset))
        self._loading = False
        self._apply(edited)

    def _on_preset_current_index_changed(self, _index: int) -> None:
        name = self.preset.currentData()
        if self._loading or name == "custom":
            return
        chosen = self.shown_settings().with_preset(name)
        self._loading = True
        self.steps.setValue(chosen.max_denoising_steps)
        self.entropy_bound.setValue(chosen.entropy_bound)
        self.t_min.setValue(chosen.t_min)
        self.t_max.setValue(chosen.t_max)
        self._loading = False
        self._apply(chosen)

    def _on_reset_button_clicked(self) -> None:
        self._apply(ChatSettings.from_settings(self.controller.settings))


def attach_chat_panel(window) -> ChatPanel:
    """Puts the panel on the right of the window's splitter, with View ▸ Chat settings (F9)."""
    panel = ChatPanel(window.controller, window)
    splitter = window.centralWidget()
    splitter.addWidget(panel)
    splitter.setStretchFactor(splitter.indexOf(panel), 0)
    sizes = splitter.sizes()
    if len(sizes) == 3:
        splitter.setSizes([sizes[0], max(sizes[1] - PANEL_WIDTH, 400), PANEL_WIDTH])

    action = QAction("Chat &settings panel", window)
    action.setObjectName("chatPanelAction")
    action.setCheckable(True)
    action.setShortcut(QKeySequence("F9"))
    action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
    action.setToolTip("Show or hide this chat's settings (F9)")
    window.addAction(action)
    view_menu = _menu(window, "viewMenu", "&View")
    view_menu.addAction(action)

    def show_panel(visible: bool) -> None:
        panel.setVisible(visible)
        if visible == window.settings.chat_panel_open:
            return
        window.settings = dataclasses.replace(window.settings, chat_panel_open=visible)
        window.controller.settings = window.settings
        try:
            save_settings(window.settings)
        except OSError as exc:
            log.warning("could not save that the chat panel is %s: %s", "open" if visible else "closed", exc)

    action.toggled.connect(show_panel)
    panel.sig_close_requested.connect(lambda: action.setChecked(False))
    action.setChecked(window.settings.chat_panel_open)
    panel.setVisible(window.settings.chat_panel_open)

    def follow_model(*_args) -> None:
        backend = window.controller.backend
        if backend is window.client:
            panel.show_model(window.client.model_info)
        else:
            panel.show_remote(answered_by(backend))

    window.client.model_loaded.connect(follow_model)
    window.client.state_changed.connect(follow_model)
    window.controller.backend_changed.connect(follow_model)
    follow_model()
    window.chat_panel_action = action
    return panel


def _menu(window, object_name: str, title: str):
    """The window's menu with this object name, made (before Help, if there is one) when missing."""
    bar = window.menuBar()
    for action in bar.actions():
        menu = action.menu()
        if menu is not None and menu.objectName() == object_name:
            return menu
    from PySide6.QtWidgets import QMenu

    menu = QMenu(title, bar)
    menu.setObjectName(object_name)
    help_menu = next((a for a in bar.actions() if a.menu() is not None and a.menu().objectName() == "helpMenu"), None)
    if help_menu is not None:
        bar.insertMenu(help_menu, menu)
    else:
        bar.addMenu(menu)
    return menu
