"""Colours of referents and of error outcomes, and masks painted as outline plus light fill."""

from __future__ import annotations

import matplotlib
import numpy as np
from scipy import ndimage

TRUE_POSITIVE = (0, 0, 255)  # blue
FALSE_POSITIVE = (0, 255, 0)  # green
FALSE_NEGATIVE = (255, 0, 0)  # red
FILL_ALPHA = 0.35  # light fill: the object stays visible under its colour
RING = (0, 0, 0)  # 1-pixel ring just outside each mask: the outline shows on any background


def referent_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 colours for referents 1..n (matplotlib's tab10, repeated past 10)."""
    palette = matplotlib.colormaps["tab10"].colors
    return (
        (np.asarray([palette[i % len(palette)] for i in range(n)]) * 255).round().astype(np.uint8)
    )


def outline_width(height: int) -> int:
    """Outline thickness in pixels for a panel ``height`` pixels tall (3 px at 240)."""
    return max(3, round(height / 80))


def outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its border (an inner outline)."""
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~inner


def paint_referents(
    image: np.ndarray, masks: np.ndarray, colors: np.ndarray | None = None
) -> np.ndarray:
    """Paint (R, H, W) masks on an (H, W, 3) uint8 image: a light fill, a solid outline in
    the referent's colour and a black ring around it (visible on an object of that colour).

    Referent r gets ``colors[r]`` (default ``referent_colors(R)``); later referents are drawn
    over earlier ones where masks overlap.
    """
    masks = np.asarray(masks, bool)
    colors = referent_colors(len(masks)) if colors is None else colors
    width = outline_width(image.shape[0])
    out = image.astype(np.float32)
    for mask, color in zip(masks, colors, strict=True):
        out[mask] = (1 - FILL_ALPHA) * out[mask] + FILL_ALPHA * color
    for mask, color in zip(masks, colors, strict=True):
        out[ndimage.binary_dilation(mask) & ~mask] = RING
        out[outline(mask, width)] = color
    return out.round().astype(np.uint8)
