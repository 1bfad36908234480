"""Markdown of a message to the HTML subset QTextDocument understands (markdown-it-py + Pygments).

Fenced code blocks get syntax highlighting and a "Copy" link whose href is `copy-code:N`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from functools import lru_cache

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

from app.theme import ThemeColors

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
        self._md = MarkdownIt("commonmark", {"html": False, "breaks": False}).enable("table")
        self._code_blocks: list[str] = []
        # markdown-it binds each rule to its renderer and calls it as (renderer, tokens, idx, options, env).
        for name, method in (
            ("fence", self._render_fence),
            ("code_block", self._render_fence),
            ("code_inline", self._render_code_inline),
            ("table_open", self._render_table_open),
        ):
            self._md.add_render_rule(name, lambda renderer, tokens, idx, options, env, method=method: method(tokens, idx))

    def render(self, text: str) -> RenderedMarkdown:
        self._code_blocks = []
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

    def _render_table_open(self, tokens, idx) -> str:
        return (
            f'<table border="1" cellspacing="0" cellpadding="4" '
            f'style="border-collapse: collapse; border-style: solid; border-color: {self.colors.table_border}; '
            f'margin-top: 4px; margin-bottom: 8px;">\n'
        )


@lru_cache(maxsize=4)
def renderer_for(colors: ThemeColors) -> MarkdownRenderer:
    return MarkdownRenderer(colors)
