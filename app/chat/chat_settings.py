"""Per-chat settings (system prompt, sampling, reply length, thinking), saved with the conversation.

A new chat starts from the defaults in Settings; a chat stored before per-chat settings existed
follows those defaults until its panel is first edited. Plain Python, no Qt.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable

from app.settings import SamplingChoice, Settings
from engine.protocol import SETTING_RANGES

log = logging.getLogger("canvas_chat.chat_settings")


@dataclass(frozen=True)
class ChatSettings(SamplingChoice):
    system_prompt: str = ""
    preset: str = "quality"
    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    seed: int | None = None  # None: a fresh random seed for every reply
    max_new_tokens: int = 1024
    thinking: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatSettings:
        """The defaults a new chat starts from."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls) if hasattr(settings, f.name)})

    def problems(self) -> list[str]:
        """Reasons these values cannot be used (engine.protocol.SETTING_RANGES); empty when fine."""
        return self.generation_settings().problems()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, defaults: ChatSettings) -> ChatSettings:
        """From stored JSON; a missing or unusable value takes the default's (logged)."""
        if not isinstance(data, dict):
            log.warning("chat settings %r are not an object; using the defaults", data)
            return defaults
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                continue
            value = data[field.name]
            if _usable(field.name, value):
                values[field.name] = float(value) if field.name in ("entropy_bound", "t_min", "t_max") else value
            else:
                log.warning("chat settings: ignoring bad value %r for %s", value, field.name)
        chosen = dataclasses.replace(defaults, **values)
        if chosen.problems():  # e.g. t_max not above t_min: the pair comes from the defaults
            log.warning("chat settings: %s; using the default temperatures", "; ".join(chosen.problems()))
            chosen = dataclasses.replace(chosen, t_min=defaults.t_min, t_max=defaults.t_max)
        return dataclasses.replace(chosen, preset=chosen.matching_preset())


def _usable(name: str, value: Any) -> bool:
    if name == "system_prompt":
        return isinstance(value, str)
    if name == "thinking":
        return isinstance(value, bool)
    if name == "preset":
        return isinstance(value, str)
    if name == "seed" and value is None:
        return True
    accepted = SETTING_RANGES.get(name)
    return accepted is not None and accepted.problem(value) is None


class ChatSettingsBook:
    """Each conversation's settings, read from the store once and kept in memory.

    The key "" holds the edits made while no chat exists yet; the chat created next takes them.
    """

    def __init__(self, load: Callable[[str], dict[str, Any] | None], defaults: Callable[[], Settings]) -> None:
        self._load = load
        self._defaults = defaults
        self._known: dict[str, ChatSettings] = {}

    def defaults(self) -> ChatSettings:
        return ChatSettings.from_settings(self._defaults())

    def get(self, conversation_id: str) -> ChatSettings:
        known = self._known.get(conversation_id)
        if known is not None:
            return known
        stored = self._load(conversation_id) if conversation_id else None
        if stored is None:
            return self.defaults()  # not cached: an unedited old chat follows the Settings defaults
        chosen = ChatSettings.from_dict(stored, self.defaults())
        self._known[conversation_id] = chosen
        return chosen

    def put(self, conversation_id: str, chat_settings: ChatSettings) -> None:
        self._known[conversation_id] = chat_settings

    def take_pending(self) -> ChatSettings:
        """The settings for a chat being created: the edits made before it existed, else defaults."""
        return self._known.pop("", None) or self.defaults()

    def forget(self, conversation_id: str) -> None:
        self._known.pop(conversation_id, None)
