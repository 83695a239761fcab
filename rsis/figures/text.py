"""Text in figures: one font, lines wrapped to a width, legends of coloured swatches.

Figures are composed with Pillow at exact pixel sizes; text uses matplotlib's bundled DejaVu
Sans, so it renders the same everywhere without system fonts.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from matplotlib import font_manager
from PIL import ImageDraw, ImageFont

FONT_PX = 15
LINE_PX = 20  # height of one text line
SWATCH_PX = 12  # side of the colour square before a legend entry
INDENT_PX = SWATCH_PX + 6  # text starts here, after the swatch
TEXT_COLOR = (30, 30, 30)

Color = tuple[int, int, int] | np.ndarray
Entry = tuple[str, Color | None]  # text, and the colour of its swatch (None: no swatch)


@cache
def font(size_px: int = FONT_PX) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at ``size_px`` pixels."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size_px)


def _break_word(word: str, width: int) -> list[str]:
    """A word wider than ``width`` pixels cut into pieces that fit (the last may be short)."""
    pieces = []
    while len(word) > 1 and font().getlength(word) > width:
        cut = len(word) - 1
        while cut > 1 and font().getlength(word[:cut]) > width:
            cut -= 1
        pieces.append(word[:cut])
        word = word[cut:]
    return [*pieces, word]


def wrap(text: str, width: int) -> list[str]:
    """``text`` split into lines no wider than ``width`` pixels, breaking between words."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if font().getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        *full, line = _break_word(word, width)
        lines += full
    return [*lines, line]


def legend_lines(entries: Sequence[Entry], width: int) -> list[Entry]:
    """Entries wrapped to ``width`` pixels: a swatch on each entry's first line only."""
    lines: list[Entry] = []
    for text, color in entries:
        wrapped = wrap(text, width - INDENT_PX)
        lines += [(line, color if i == 0 else None) for i, line in enumerate(wrapped)]
    return lines


def legend_height(entries: Sequence[Entry], width: int) -> int:
    """Pixels a ``draw_legend`` of ``entries`` takes at ``width``."""
    return LINE_PX * len(legend_lines(entries, width))


def _swatch(draw: ImageDraw.ImageDraw, x: float, top: int, color: Color) -> None:
    """A colour square vertically centred in the text line starting at ``top``."""
    pad = (LINE_PX - SWATCH_PX) // 2
    box = (x, top + pad, x + SWATCH_PX - 1, top + pad + SWATCH_PX - 1)
    draw.rectangle(box, fill=tuple(int(c) for c in color), outline=TEXT_COLOR)


def draw_legend(
    draw: ImageDraw.ImageDraw, x: int, y: int, entries: Sequence[Entry], width: int
) -> None:
    """Draw ``entries`` from (x, y) down, wrapped to ``width`` pixels, each after its swatch."""
    for row, (text, color) in enumerate(legend_lines(entries, width)):
        top = y + row * LINE_PX
        if color is not None:
            _swatch(draw, x, top, color)
        draw.text(
            (x + INDENT_PX, top + LINE_PX / 2), text, fill=TEXT_COLOR, font=font(), anchor="lm"
        )


def inline_width(segments: Sequence[Entry]) -> float:
    """Pixel width of ``segments`` drawn on one line by ``draw_inline``."""
    return sum(INDENT_PX * (c is not None) + font().getlength(t) + SWATCH_PX for t, c in segments)


def draw_inline(
    draw: ImageDraw.ImageDraw, center_x: float, y: int, segments: Sequence[Entry]
) -> None:
    """Draw ``segments`` (each with an optional swatch) on one line centred at ``center_x``."""
    x = center_x - (inline_width(segments) - SWATCH_PX) / 2
    for text, color in segments:
        if color is not None:
            _swatch(draw, x, y, color)
            x += INDENT_PX
        draw.text((x, y + LINE_PX / 2), text, fill=TEXT_COLOR, font=font(), anchor="lm")
        x += font().getlength(text) + SWATCH_PX
