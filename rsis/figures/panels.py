"""Paper-style figures: rows of equally sized panels, column titles, a legend under each row.

Fig. 2/3 style (``qualitative_figure``): the image, the ground truth, the result (referents
coloured by their position in the expression sequence, as outline plus light fill) and an
error map: true positives blue, false positives green, false negatives red, true negatives
black. Fig. 4 style (``inverse_order_figure``): the image, the ground truth, the result with
the expressions fed in the original and in the inverse order; the mask of expression k has
colour k in both, so a model that follows the expressions shows the same colours twice.
Panels are drawn at the pixel size they are given (the command passes the image's original
resolution, at least 240 pixels tall).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from rsis.figures.palette import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    TRUE_POSITIVE,
    paint_referents,
    referent_colors,
)
from rsis.figures.text import LINE_PX, Entry, draw_inline, draw_legend, legend_height
from rsis.io import atomic_path

TITLE_PX = LINE_PX + 8  # strip of column titles above a row
GAP_PX = 8  # white space between panels and around the figure
ERROR_TITLE: list[Entry] = [
    ("Errors:", None),
    ("TP", TRUE_POSITIVE),
    ("FP", FALSE_POSITIVE),
    ("FN", FALSE_NEGATIVE),
]


@dataclass
class Sample:
    """One image with its referents in the order fed to the model, all at one pixel size.

    Args:
        image: (H, W, 3) uint8.
        gt: (R, H, W) ground-truth masks.
        pred: (R, H, W) predicted masks, expressions fed in the given order.
        expressions: R expressions.
        pred_inverse: (R, H, W) predictions with the expressions fed in inverse order, rows
            re-ordered to match ``gt`` (only for ``inverse_order_figure``).
    """

    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    expressions: list[str]
    pred_inverse: np.ndarray | None = None


@dataclass
class Row:
    """Panels of one row ((H, W, 3) uint8, one per column) and the legend drawn under them."""

    panels: list[np.ndarray]
    legend: list[Entry]


def error_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 map: TP blue, FP green, FN red, TN black.

    With several referents ((R, H, W) masks) each referent is compared with its own ground
    truth; a pixel that is an error for any referent shows that error (FN drawn over FP,
    both over TP), so a mask on the wrong object is never hidden by a right one.
    """
    pred = np.asarray(pred, bool).reshape(-1, *np.shape(pred)[-2:])
    gt = np.asarray(gt, bool).reshape(pred.shape)
    out = np.zeros((*pred.shape[1:], 3), np.uint8)
    out[(pred & gt).any(0)] = TRUE_POSITIVE
    out[(pred & ~gt).any(0)] = FALSE_POSITIVE
    out[(~pred & gt).any(0)] = FALSE_NEGATIVE
    return out


def _layout(rows: Sequence[Row], titles: bool) -> tuple[int, list[tuple[int, bool]]]:
    """Figure width, and per row its top and whether it gets a strip of column titles."""
    widths = [len(r.panels) * (r.panels[0].shape[1] + GAP_PX) - GAP_PX for r in rows]
    tops, top, previous = [], GAP_PX, None
    for row, width in zip(rows, widths, strict=True):
        titled = titles and row.panels[0].shape[1] != previous  # again when columns move
        tops.append((top, titled))
        top += TITLE_PX * titled + row.panels[0].shape[0] + legend_height(row.legend, width)
        top += GAP_PX
        previous = row.panels[0].shape[1]
    return max(widths) + 2 * GAP_PX, [*tops, (top, False)]


def compose(
    rows: Sequence[Row], titles: Sequence[Sequence[Entry]] | None, out: str | os.PathLike
) -> None:
    """Write a PNG of ``rows`` (each panel at its own pixel size) under column ``titles``."""
    columns = len(titles) if titles else len(rows[0].panels)
    for row in rows:
        size = row.panels[0].shape
        if len(row.panels) != columns or any(p.shape != size for p in row.panels):
            raise ValueError(f"every row needs {columns} panels of one size")
    width, tops = _layout(rows, titles is not None)
    canvas = Image.new("RGB", (width, tops[-1][0]), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (top, titled) in zip(rows, tops, strict=False):
        height, panel_w = row.panels[0].shape[:2]
        if titled and titles:
            for col, title in enumerate(titles):
                draw_inline(draw, GAP_PX + col * (panel_w + GAP_PX) + panel_w / 2, top, title)
            top += TITLE_PX
        for col, panel in enumerate(row.panels):
            canvas.paste(Image.fromarray(panel), (GAP_PX + col * (panel_w + GAP_PX), top))
        row_width = len(row.panels) * (panel_w + GAP_PX) - GAP_PX
        draw_legend(draw, GAP_PX, top + height, row.legend, row_width)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")


def legend(expressions: Sequence[str], inverse: bool = False) -> list[Entry]:
    """One numbered entry per expression in its referent's colour; with ``inverse``, the
    positions it was fed at in the original and in the inverse order."""
    n = len(expressions)
    entries = []
    for k, (text, color) in enumerate(zip(expressions, referent_colors(n), strict=True)):
        fed = f"  [fed {k + 1} of {n}; in inverse order {n - k} of {n}]" if inverse else ""
        entries.append((f"{k + 1}. {text}{fed}", color))
    return entries


def _rows(
    samples: Sequence[Sample], last: Callable[[Sample], np.ndarray], inverse: bool
) -> list[Row]:
    """Image, ground truth, result and ``last(sample)`` per sample, with the legend."""
    return [
        Row(
            [s.image, paint_referents(s.image, s.gt), paint_referents(s.image, s.pred), last(s)],
            legend(s.expressions, inverse),
        )
        for s in samples
    ]


def qualitative_figure(samples: Sequence[Sample], out: str | os.PathLike) -> None:
    """Fig. 2/3 style: image, ground truth, result, error map; one row per sample."""
    rows = _rows(samples, lambda s: error_map(s.pred, s.gt), inverse=False)
    titles = [[("Image", None)], [("Ground truth", None)], [("Result", None)], ERROR_TITLE]
    compose(rows, titles, out)


def inverse_order_figure(samples: Sequence[Sample], out: str | os.PathLike) -> None:
    """Fig. 4 style: image, ground truth, result in original and in inverse order."""
    if any(s.pred_inverse is None for s in samples):
        raise ValueError("inverse_order_figure needs pred_inverse for every sample")
    rows = _rows(samples, lambda s: paint_referents(s.image, s.pred_inverse), inverse=True)
    titles = [
        [("Image", None)],
        [("Ground truth", None)],
        [("Fed 1, 2, ..., R", None)],
        [("Fed R, ..., 2, 1 (same colours)", None)],
    ]
    compose(rows, titles, out)
