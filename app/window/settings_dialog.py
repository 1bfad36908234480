"""The Settings dialog: system prompt, sampling preset with raw values, reply length, look and motion."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

import dataclasses

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPlainTextEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.settings import PRESETS, Settings
from app.window.seed_edit import SeedEdit
from engine.protocol import SETTING_RANGES

PRESET_LABELS = {"fast": "Fast", "balanced": "Balanced", "quality": "Quality", "custom": "Custom"}
THEME_LABELS = {"system": "Follow the system", "light": "Light", "dark": "Dark"}


class SettingsDialog(QDialog):
    """Edits a copy of the settings; `settings_accepted` carries the result when OK is pressed."""

    settings_accepted = Signal(object)

    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("settingsDialog")
        self.setWindowTitle("Settings")
        self._settings = settings
        self._updating = False

        self.system_prompt = QPlainTextEdit(self)
        self.system_prompt.setObjectName("systemPromptEdit")
        self.system_prompt.setPlaceholderText("Optional instructions the model reads before every chat")
        self.system_prompt.setPlainText(settings.system_prompt)
        self.system_prompt.setFixedHeight(90)
        self.system_prompt.setAccessibleName("System prompt for new chats")

        self.preset = QComboBox(self)
        self.preset.setObjectName("presetCombo")
        for name in ("fast", "balanced", "quality", "custom"):
            self.preset.addItem(PRESET_LABELS[name], name)
        self.steps = QSpinBox(self)
        self.steps.setRange(*_bounds("max_denoising_steps"))
        self.entropy_bound = QDoubleSpinBox(self)
        self.entropy_bound.setRange(*_bounds("entropy_bound"))
        self.entropy_bound.setDecimals(3)
        self.entropy_bound.setSingleStep(0.05)
        self.t_min = QDoubleSpinBox(self)
        self.t_min.setRange(*_bounds("t_min"))
        self.t_min.setSingleStep(0.05)
        self.t_max = QDoubleSpinBox(self)
        self.t_max.setRange(*_bounds("t_max"))
        self.t_max.setSingleStep(0.05)
        self.max_new_tokens = QSpinBox(self)
        self.max_new_tokens.setRange(16, _bounds("max_new_tokens")[1])
        self.max_new_tokens.setSingleStep(256)
        self.max_new_tokens.setSuffix(" tokens")
        self.seed = SeedEdit(self)
        self.seed.setObjectName("seedEdit")

        self.theme = QComboBox(self)
        self.theme.setObjectName("themeCombo")
        for name in ("system", "light", "dark"):
            self.theme.addItem(THEME_LABELS[name], name)
        self.reduced_motion = QCheckBox("Reduced motion: show committed text only, no denoising animation", self)
        self.replay_speed = QDoubleSpinBox(self)
        self.replay_speed.setRange(0.05, 20.0)
        self.replay_speed.setSingleStep(0.25)
        self.replay_speed.setSuffix("\u00d7")

        self.problems = QLabel(self)
        self.problems.setObjectName("settingsProblems")
        self.problems.setWordWrap(True)
        self.problems.setStyleSheet("color: #c0262d;")

        sampling = QGroupBox("Denoising", self)
        sampling_form = QFormLayout(sampling)
        sampling_form.addRow("Preset", self.preset)
        sampling_form.addRow("Denoising steps per canvas", self.steps)
        sampling_form.addRow("Entropy bound", self.entropy_bound)
        sampling_form.addRow("Temperature (last step)", self.t_min)
        sampling_form.addRow("Temperature (first step)", self.t_max)
        sampling_form.addRow("Reply length (at most)", self.max_new_tokens)
        sampling_form.addRow("Seed", self.seed)

        look = QGroupBox("Appearance", self)
        look_form = QFormLayout(look)
        look_form.addRow("Theme", self.theme)
        look_form.addRow(self.reduced_motion)
        look_form.addRow("Replay speed", self.replay_speed)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self._on_buttons_accepted)
        buttons.rejected.connect(self.reject)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("New chats start from these settings; each chat keeps its own (View \u25b8 Chat settings panel).", self))
        layout.addWidget(QLabel("System prompt", self))
        layout.addWidget(self.system_prompt)
        layout.addWidget(sampling)
        layout.addWidget(look)
        layout.addWidget(self.problems)
        layout.addWidget(buttons)

        self._load(settings)
        self.preset.currentIndexChanged.connect(self._on_preset_current_index_changed)
        for spin in (self.steps, self.entropy_bound, self.t_min, self.t_max):
            spin.valueChanged.connect(self._on_sampling_value_changed)
        self.max_new_tokens.valueChanged.connect(self._validate)
        self.seed.textChanged.connect(self._validate)

    def _load(self, settings: Settings) -> None:
        self._updating = True
        self.preset.setCurrentIndex(self.preset.findData(settings.preset))
        self.steps.setValue(settings.max_denoising_steps)
        self.entropy_bound.setValue(settings.entropy_bound)
        self.t_min.setValue(settings.t_min)
        self.t_max.setValue(settings.t_max)
        self.max_new_tokens.setValue(settings.max_new_tokens)
        self.seed.set_seed(settings.seed)
        self.theme.setCurrentIndex(self.theme.findData(settings.theme))
        self.reduced_motion.setChecked(settings.reduced_motion)
        self.replay_speed.setValue(settings.replay_speed)
        self._updating = False
        self._validate()

    def edited_settings(self) -> Settings:
        """The settings as the dialog shows them now."""
        base = dataclasses.replace(
            self._settings,
            system_prompt=self.system_prompt.toPlainText(),
            max_new_tokens=self.max_new_tokens.value(),
            theme=self.theme.currentData(),
            reduced_motion=self.reduced_motion.isChecked(),
            replay_speed=self.replay_speed.value(),
            seed=self.seed.seed(),
        )
        return base.with_sampling(
            max_denoising_steps=self.steps.value(),
            entropy_bound=round(self.entropy_bound.value(), 3),
            t_min=round(self.t_min.value(), 2),
            t_max=round(self.t_max.value(), 2),
        )

    def _on_preset_current_index_changed(self, _index: int) -> None:
        name = self.preset.currentData()
        if self._updating or name not in PRESETS:
            return
        preset = PRESETS[name]
        self._updating = True
        self.steps.setValue(preset.max_denoising_steps)
        self.entropy_bound.setValue(preset.entropy_bound)
        self.t_min.setValue(preset.t_min)
        self.t_max.setValue(preset.t_max)
        self._updating = False
        self._validate()

    def _on_sampling_value_changed(self, _value) -> None:
        if self._updating:
            return
        self._updating = True
        self.preset.setCurrentIndex(self.preset.findData(self.edited_settings().preset))
        self._updating = False
        self._validate()

    def _validate(self, *_args) -> list[str]:
        problems = self.edited_settings().problems()
        self.problems.setText("\n".join(problems))
        self.problems.setVisible(bool(problems))
        self.ok_button.setEnabled(not problems)
        return problems

    def _on_buttons_accepted(self) -> None:
        if self._validate():
            return
        self.settings_accepted.emit(self.edited_settings())
        self.accept()


def _bounds(name: str) -> tuple:
    """The engine's accepted range for a sampling setting (one copy, in engine.protocol)."""
    accepted = SETTING_RANGES[name]
    return accepted.low, accepted.high
