"""Text in figures: one font, lines wrapped to a width, legends of coloured swatches, and
referent numbers written on their masks.

Figures are composed with Pillow at exact pixel sizes; text uses matplotlib's bundled DejaVu
Sans, so it renders the same everywhere without system fonts.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

FONT_PX = 15
LINE_PX = 20  # height of one text line
SWATCH_PX = 12  # side of the colour square before a legend entry
INDENT_PX = SWATCH_PX + 6  # text starts here, after the swatch
TEXT_COLOR = (30, 30, 30)
NUMBER_FILL, NUMBER_EDGE = (255, 255, 255), (0, 0, 0)  # white digits outlined in black

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


def number_px(height: int) -> int:
    """Size of the referent numbers drawn on a panel ``height`` pixels tall (15 px up to 360)."""
    return max(FONT_PX, round(height / 24))


def label_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of a non-empty ``mask`` farthest from its border: inside it even
    where the mask is ring- or L-shaped (unlike its centroid)."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    return int(x), int(y)


def draw_numbers(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 ``image`` with the number k (from 1) of each non-empty mask k of
    (R, H, W) ``masks`` written on it, white outlined in black (readable on any colour),
    at its ``label_point``, kept inside the image."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    size = number_px(image.shape[0])
    stroke = max(2, size // 8)
    for number, mask in enumerate(np.asarray(masks, bool), 1):
        if not mask.any():
            continue
        text = str(number)
        left, top, right, bottom = draw.textbbox(
            (0, 0), text, font=font(size), anchor="mm", stroke_width=stroke
        )
        x, y = label_point(mask)
        x = min(max(x, -left), image.shape[1] - right)
        y = min(max(y, -top), image.shape[0] - bottom)
        draw.text(
            (x, y),
            text,
            font=font(size),
            anchor="mm",
            fill=NUMBER_FILL,
            stroke_width=stroke,
            stroke_fill=NUMBER_EDGE,
        )
    return np.array(canvas)
