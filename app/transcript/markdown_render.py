"""Markdown of a message to the HTML subset QTextDocument understands (markdown-it-py + Pygments).

Fenced code blocks get syntax highlighting and a "Copy" link whose href is `copy-code:N`.
`$…$` and `$$…$$` are TeX math (mdit-py-plugins' dollarmath), drawn as images by `math_render`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from functools import lru_cache

from markdown_it import MarkdownIt
from mdit_py_plugins.dollarmath import dollarmath_plugin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

from app.theme import ThemeColors
from app.transcript.math_render import formula_image

COPY_CODE_SCHEME = "copy-code"


@dataclass
class RenderedMarkdown:
    html: str
    code_blocks: list[str] = field(default_factory=list)


@lru_cache(maxsize=64)
def _lexer(language: str):
    try:
        return get_lexer_by_name(language, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return None


@lru_cache(maxsize=4)
def _formatter(style: str) -> HtmlFormatter:
    return HtmlFormatter(nowrap=True, noclasses=True, style=style)


def highlight_code(code: str, language: str, style: str) -> str:
    lexer = _lexer(language.lower()) if language else None
    if lexer is None:
        return html.escape(code)
    return highlight(code, lexer, _formatter(style))


class MarkdownRenderer:
    """Renders message Markdown with one theme's colours; raw HTML in the source stays text."""

    def __init__(self, colors: ThemeColors):
        self.colors = colors
        # No space just inside the dollars and no digit just after the closing one: "$5 and $10"
        # stays a price, "$x$" is math (pandoc's rule).
        self._md = (
            MarkdownIt("commonmark", {"html": False, "breaks": False})
            .enable("table")
            .use(dollarmath_plugin, allow_space=False, allow_digits=False, double_inline=True, allow_labels=True)
        )
        self._code_blocks: list[str] = []
        self._font_pt = 10.0
        self._scale = 1
        # markdown-it binds each rule to its renderer and calls it as (renderer, tokens, idx, options, env).
        for name, method in (
            ("fence", self._render_fence),
            ("code_block", self._render_fence),
            ("code_inline", self._render_code_inline),
            ("table_open", self._render_table_open),
            ("math_inline", self._render_math_inline),
            ("math_inline_double", self._render_math_block),
            ("math_block", self._render_math_block),
            ("math_block_label", self._render_math_block),
        ):
            self._md.add_render_rule(name, lambda renderer, tokens, idx, options, env, method=method: method(tokens, idx))

    def render(self, text: str, font_pt: float = 10.0, scale: int = 1) -> RenderedMarkdown:
        """HTML of `text`; formulas are drawn for a `font_pt` text font on a screen of pixel ratio `scale`."""
        self._code_blocks = []
        self._font_pt, self._scale = font_pt, max(1, scale)
        body = self._md.render(text)
        return RenderedMarkdown(html=body, code_blocks=list(self._code_blocks))

    def style_sheet(self) -> str:
        """Default style sheet for the QTextDocument the HTML goes into."""
        c = self.colors
        return (
            f"a {{ color: {c.link}; text-decoration: none; }}"
            f"pre, code {{ font-family: monospace; }}"
            f"th {{ font-weight: 600; }}"
            f"h1 {{ font-size: x-large; }} h2 {{ font-size: large; }} h3 {{ font-size: medium; }}"
            f"p {{ margin-top: 0px; margin-bottom: 6px; }}"
        )

    # -- render rules

    def _render_fence(self, tokens, idx) -> str:
        token = tokens[idx]
        language = (token.info or "").strip().split(" ")[0] if token.type == "fence" else ""
        code = token.content
        number = len(self._code_blocks)
        self._code_blocks.append(code)
        c = self.colors
        body = highlight_code(code.rstrip("\n"), language, c.pygments_style)
        label = html.escape(language) if language else "code"
        return (
            f'<table width="100%" cellspacing="0" cellpadding="0" border="0" '
            f'style="margin-top: 4px; margin-bottom: 8px;" bgcolor="{c.code_background}">'
            f'<tr><td style="padding: 3px 8px 0px 8px;"><span style="color: {c.dim_text}; font-size: small;">'
            f"{label}</span></td>"
            f'<td align="right" style="padding: 3px 8px 0px 8px;"><a href="{COPY_CODE_SCHEME}:{number}" '
            f'style="font-size: small;">Copy</a></td></tr>'
            f'<tr><td colspan="2" style="padding: 2px 8px 6px 8px;">'
            f'<pre style="margin: 0px; color: {c.text};">{body}</pre></td></tr></table>\n'
        )

    def _render_code_inline(self, tokens, idx) -> str:
        content = html.escape(tokens[idx].content)
        return f'<code style="background-color: {self.colors.inline_code_background};">&nbsp;{content}&nbsp;</code>'

    def _math_image(self, tex: str, display: bool) -> str:
        image = formula_image(tex, self.colors.text, self._font_pt, display, self._scale)
        if image is None:  # mathtext cannot draw it: show what the model wrote
            dollars = "$$" if display else "$"
            source = html.escape(f"{dollars}{tex}{dollars}")
            return f'<span style="color: {self.colors.dim_text};">{source}</span>'
        return (
            f'<img src="{image.data_url}" width="{image.width:.1f}" height="{image.height:.1f}" '
            f'align="middle" alt="{html.escape(tex, quote=True)}">'
        )

    def _render_math_inline(self, tokens, idx) -> str:
        return self._math_image(tokens[idx].content, display=False)

    def _render_math_block(self, tokens, idx) -> str:
        image = self._math_image(tokens[idx].content, display=True)
        return f'<p align="center" style="margin-top: 4px; margin-bottom: 8px;">{image}</p>\n'

    def _render_table_open(self, tokens, idx) -> str:
        return (
            f'<table border="1" cellspacing="0" cellpadding="4" '
            f'style="border-collapse: collapse; border-style: solid; border-color: {self.colors.table_border}; '
            f'margin-top: 4px; margin-bottom: 8px;">\n'
        )


@lru_cache(maxsize=4)
def renderer_for(colors: ThemeColors) -> MarkdownRenderer:
    return MarkdownRenderer(colors)
