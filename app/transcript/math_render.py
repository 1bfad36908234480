"""TeX formulas of a reply drawn as PNG images with matplotlib's mathtext (no Qt, no LaTeX install).

An image is padded so that, placed with `align="middle"` in a QTextDocument, the formula's baseline
sits on the text's baseline. Images are cached per formula, colour, size and scale; a formula that
mathtext cannot parse gives None (the caller shows its source).
"""

from __future__ import annotations

import base64
import io
import logging
import re
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger("canvas_chat.math")

DISPLAY_SCALE = 1.25  # $$…$$ formulas are drawn a little larger than the text
_X_HEIGHT = 0.5  # x-height of the transcript font, as a fraction of its size (Qt centres an
# align="middle" image half an x-height above the baseline)
MAX_FORMULA_CHARS = 2000
_FRAC = re.compile(r"\\frac(?![A-Za-z])")


@dataclass(frozen=True)
class FormulaImage:
    data_url: str  # data:image/png;base64,…
    width: float  # in logical pixels (the PNG has `scale` times as many)
    height: float


@lru_cache(maxsize=1)
def _parser():
    # Imported on first use: matplotlib takes a moment to load and most replies have no math.
    from matplotlib.mathtext import MathTextParser

    return MathTextParser("agg")


@lru_cache(maxsize=512)
def formula_image(tex: str, color: str, font_pt: float, display: bool = False, scale: int = 2) -> FormulaImage | None:
    """The formula `tex` (without dollars) drawn in `color` ("#rrggbb") at `font_pt` points."""
    tex = tex.strip()
    if not tex or len(tex) > MAX_FORMULA_CHARS:
        return None
    import numpy as np
    from matplotlib.font_manager import FontProperties
    from PIL import Image

    if display:
        # mathtext has no display style: make a display formula's fractions full size as TeX would.
        tex = _FRAC.sub(r"\\dfrac", tex)
    size = font_pt * (DISPLAY_SCALE if display else 1.0)
    dpi = 96 * scale  # Qt's logical pixels are 1/96 inch
    try:
        parsed = _parser().parse(f"${tex}$", dpi=dpi, prop=FontProperties(size=size))
    except (ValueError, RuntimeError, KeyError, IndexError) as exc:  # pyparsing errors arrive as ValueError
        log.info("formula %r not drawn: %s", tex[:80], str(exc).splitlines()[0] if str(exc) else exc)
        return None
    alpha = np.asarray(parsed.image, dtype=np.uint8)
    if alpha.size == 0:
        return None
    height, width = alpha.shape
    depth = int(round(parsed.depth))
    half_x = _X_HEIGHT * size * dpi / 72 / 2
    # Qt gives an align="middle" image a descent of (height - half_x) / 2: pad so that equals depth.
    pad_bottom = max(0, int(round(height - half_x - 2 * depth)))
    pad_top = max(0, int(round(2 * depth + half_x - height)))
    alpha = np.pad(alpha, ((pad_top, pad_bottom), (0, 0)))
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    rgba[..., 3] = alpha
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, "PNG", optimize=True)
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return FormulaImage(url, width / scale, alpha.shape[0] / scale)
