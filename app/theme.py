"""Light and dark colours of the window: the Qt palette, chat bubbles, code blocks, entropy tints.

The scheme follows the OS (QStyleHints.colorScheme) unless the settings force one.
"""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette

THEME_CHOICES = ("system", "light", "dark")


@dataclass(frozen=True)
class ThemeColors:
    name: str  # "light" or "dark"
    window: str
    base: str
    text: str
    dim_text: str
    accent: str
    accent_text: str
    user_bubble: str
    user_text: str
    assistant_bubble: str
    assistant_border: str
    code_background: str
    code_border: str
    inline_code_background: str
    link: str
    table_border: str
    noise_glyph: str
    # Foreground tints for settled tokens by entropy bucket 0 (confident) .. 3 (very uncertain).
    entropy_tints: tuple[str, str, str, str]
    banner_background: str
    banner_text: str
    mark_stopped: str
    mark_error: str
    pygments_style: str

    def color(self, name: str) -> QColor:
        return QColor(getattr(self, name))


LIGHT = ThemeColors(
    name="light",
    window="#f6f7f9",
    base="#ffffff",
    text="#1d2129",
    dim_text="#6b7280",
    accent="#2f6fde",
    accent_text="#ffffff",
    user_bubble="#dfeafe",
    user_text="#112244",
    assistant_bubble="#ffffff",
    assistant_border="#e2e5ea",
    code_background="#f3f4f6",
    code_border="#d9dce1",
    inline_code_background="#eceef1",
    link="#1f5fcc",
    table_border="#c9cdd3",
    noise_glyph="#b6bcc6",
    entropy_tints=("#1d2129", "#7a5a00", "#b35c00", "#c0262d"),
    banner_background="#fde8e8",
    banner_text="#6b1111",
    mark_stopped="#8a6100",
    mark_error="#c0262d",
    pygments_style="default",
)

DARK = ThemeColors(
    name="dark",
    window="#1b1d22",
    base="#23262d",
    text="#e6e8ec",
    dim_text="#9aa1ad",
    accent="#5b8ff0",
    accent_text="#ffffff",
    user_bubble="#2c3f63",
    user_text="#eef3ff",
    assistant_bubble="#262a31",
    assistant_border="#343944",
    code_background="#181a1f",
    code_border="#3a3f4a",
    inline_code_background="#333844",
    link="#8ab4ff",
    table_border="#4a505c",
    noise_glyph="#4f5664",
    entropy_tints=("#e6e8ec", "#e8cf7a", "#f2a65a", "#ff7b7b"),
    banner_background="#4a1f22",
    banner_text="#ffd9d9",
    mark_stopped="#e0b050",
    mark_error="#ff7b7b",
    pygments_style="github-dark",
)


def os_prefers_dark() -> bool:
    app = QGuiApplication.instance()
    if app is None:
        return False
    return QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark


def resolve_theme(choice: str) -> ThemeColors:
    """The colours for a settings choice: "light", "dark" or "system" (follow the OS)."""
    if choice == "dark":
        return DARK
    if choice == "light":
        return LIGHT
    return DARK if os_prefers_dark() else LIGHT


def build_palette(colors: ThemeColors) -> QPalette:
    palette = QPalette()
    window, base, text = QColor(colors.window), QColor(colors.base), QColor(colors.text)
    dim = QColor(colors.dim_text)
    accent = QColor(colors.accent)
    button = QColor(colors.base) if colors.name == "dark" else QColor("#eef0f3")
    roles = {
        QPalette.ColorRole.Window: window,
        QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base,
        QPalette.ColorRole.AlternateBase: window,
        QPalette.ColorRole.Text: text,
        QPalette.ColorRole.Button: button,
        QPalette.ColorRole.ButtonText: text,
        QPalette.ColorRole.BrightText: QColor("#ffffff"),
        QPalette.ColorRole.Highlight: accent,
        QPalette.ColorRole.HighlightedText: QColor(colors.accent_text),
        QPalette.ColorRole.Link: QColor(colors.link),
        QPalette.ColorRole.ToolTipBase: base,
        QPalette.ColorRole.ToolTipText: text,
        QPalette.ColorRole.PlaceholderText: dim,
        QPalette.ColorRole.Mid: QColor(colors.assistant_border),
        QPalette.ColorRole.Midlight: QColor(colors.assistant_border),
        QPalette.ColorRole.Light: base.lighter(120),
        QPalette.ColorRole.Dark: window.darker(130),
        QPalette.ColorRole.Shadow: QColor("#000000"),
    }
    for role, color in roles.items():
        palette.setColor(role, color)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, dim)
    return palette


def apply_theme(app, colors: ThemeColors) -> None:
    """Sets the Fusion style and this theme's palette on the application."""
    if app.style().name().lower() != "fusion":
        app.setStyle("Fusion")
    app.setPalette(build_palette(colors))
