"""TeX math in replies: $…$ and $$…$$ become images in the theme's text colour, prices and code
stay text, a formula mathtext cannot draw shows its source, and the transcript shows the images."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image
from PySide6.QtGui import QTextImageFormat

from app.chat.messages import Message
from app.theme import DARK, LIGHT
from app.transcript.markdown_render import MarkdownRenderer
from app.transcript.math_render import formula_image
from tests.gui.window_helpers import TEST_SETTINGS, ignore_offscreen_limits

IMG = re.compile(r'<img src="data:image/png;base64,([^"]+)"[^>]*alt="([^"]*)"')


def _images(html: str) -> list[tuple[Image.Image, str]]:
    return [(Image.open(io.BytesIO(base64.b64decode(data))), alt) for data, alt in IMG.findall(html)]


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def _opaque_colours(image: Image.Image) -> set[tuple[int, int, int]]:
    pixels = np.asarray(image.convert("RGBA")).reshape(-1, 4)
    return {tuple(int(v) for v in p[:3]) for p in pixels[pixels[:, 3] > 0]}


def test_inline_and_display_math_become_images_in_the_text_colour():
    html = MarkdownRenderer(LIGHT).render("Euler: $e^{i\\pi} + 1 = 0$, and\n\n$$\\frac{a}{b}$$\n", font_pt=10).html
    images = _images(html)
    assert [alt for _, alt in images] == ["e^{i\\pi} + 1 = 0", "\\frac{a}{b}"]
    assert "$" not in html
    assert '<p align="center"' in html  # the display formula is a centred paragraph of its own
    for image, _ in images:
        assert _opaque_colours(image) == {_rgb(LIGHT.text)}
    dark = _images(MarkdownRenderer(DARK).render("$x$").html)[0][0]
    assert _opaque_colours(dark) == {_rgb(DARK.text)}


@pytest.mark.parametrize(
    "text",
    [
        "It costs $5 and $10.",
        "Small or large: $5/$10.",
        "From $10,000 to $20,000 a year.",
        "Pay $5, then $ 3 later.",
        "```\nprice = \"$x$\"  # $5 and $10\n```",
        "Use `$x$` in the template.",
        "    indented $y$ code",
    ],
)
def test_prices_and_code_are_never_math(text):
    html = MarkdownRenderer(LIGHT).render(text).html
    assert "<img" not in html
    assert "$" in html


def test_a_formula_mathtext_cannot_draw_shows_its_source():
    html = MarkdownRenderer(LIGHT).render("Broken $\\frac{a$ and fine $b$.").html
    assert f'<span style="color: {LIGHT.dim_text};">$\\frac{{a$</span>' in html
    assert [alt for _, alt in _images(html)] == ["b"]


def test_formula_images_are_cached_and_scaled():
    formula_image.cache_clear()
    one = formula_image("x^2", "#112233", 10.0)
    assert formula_image("x^2", "#112233", 10.0) is one and formula_image.cache_info().hits == 1
    double = formula_image("x^2", "#112233", 10.0, scale=2)
    assert double.width == pytest.approx(one.width, abs=1) and double.height == pytest.approx(one.height, abs=1)
    assert formula_image("x^2", "#112233", 10.0, display=True).width > one.width
    # A display fraction is drawn full size (TeX's display style), not squeezed into the line.
    inline, display = (formula_image("\\frac{a}{b}", "#112233", 10.0, display=flag) for flag in (False, True))
    assert display.height > 1.8 * inline.height


@pytest.fixture
def window(qtbot):
    from app.chat.store import ChatStore
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
def test_the_transcript_draws_a_replys_math_and_keeps_its_text(window, qtbot):
    conversation = window.store.create_conversation("Math")
    reply = "The area is $\\pi r^2$, priced at $5 and $10:\n\n$$A = \\pi r^2$$\n"
    for message in (Message(role="user", content="Area of a circle?", conversation_id=conversation.id),
                    Message(role="assistant", content=reply, conversation_id=conversation.id)):
        window.store.add_message(message)
    window.controller.conversations.insert(0, conversation)
    window.controller.open_conversation(conversation.id)
    message = window.controller.transcript[1]
    view = window.transcript_view
    doc, _ = view.delegate.document_for(message, view.delegate.content_width("assistant", view.viewport().width()))
    names = []
    block = doc.begin()
    while block.isValid():
        iterator = block.begin()
        while not iterator.atEnd():
            fmt = iterator.fragment().charFormat()
            if fmt.isImageFormat():
                names.append(QTextImageFormat(fmt).name()[:22])
            iterator += 1
        block = block.next()
    assert names == ["data:image/png;base64,"] * 2
    assert "priced at $5 and $10" in doc.toPlainText()
    assert message.content == reply  # the stored text is what the model wrote
