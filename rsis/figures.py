"""Qualitative figures (the paper's Fig. 2/3 and Fig. 4) and the predictions file they read.

Fig. 2/3 style: one row per image with the image, the ground truth, the prediction (referents
coloured by their position in the expression sequence) and an error map: true positives blue,
false positives green, false negatives red, true negatives black. Fig. 4 style: the image, the
ground truth, the prediction with the expressions in the original order and in the inverse
order, each referent keeping its colour, so a model that follows the expressions shows the
same colours in both.

Predictions file (HDF5, written by evaluation with ``save_predictions``): one row per predicted
referent, in the order the referents were fed, sequence after sequence:
``ref_id``, ``sent_id`` (N,) int64 (the referent and the expression fed for it), ``counts``
(N,) variable-length uint8 (COCO compressed RLE from ``pycocotools.mask.encode``), ``size``
(N, 2) int64 (height, width); root attributes describe the run (split, order, expression, ...).
Images and ground truth come from the split's cache, looked up by ``ref_id``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from pycocotools import mask as mask_utils

from rsis.data.cache import read_masks
from rsis.data.refer import add_refer_arguments, refer_from_args
from rsis.errors import UserError
from rsis.io import atomic_path
from rsis.metrics import MetricAccumulator

log = logging.getLogger(__name__)

TRUE_POSITIVE = (0, 0, 255)  # blue
FALSE_POSITIVE = (0, 255, 0)  # green
FALSE_NEGATIVE = (255, 0, 0)  # red
TITLE_PX = 24  # strip of column titles on top
LINE_PX = 16  # one expression line under a row of panels
GAP_PX = 4  # white space between panels
DPI = 100
ERROR_MAP_TITLE = "Error map"  # colours (TP blue, FP green, FN red) are in the caption


# --- predictions file ---------------------------------------------------------------------


@dataclass
class Predictions:
    """Predicted masks as COCO RLEs, one row per referent, in the order they were fed."""

    ref_id: np.ndarray
    sent_id: np.ndarray
    rles: list[dict]
    attrs: dict[str, object] = field(default_factory=dict)

    def masks(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode rows to an (len(rows), H, W) bool array (all rows must share one size)."""
        return np.stack([mask_utils.decode(self.rles[r]) > 0 for r in rows])


def encode_masks(masks: np.ndarray | torch.Tensor) -> list[dict]:
    """COCO compressed RLEs of (N, H, W) bool or 0/1 masks."""
    if isinstance(masks, torch.Tensor):
        masks = masks.cpu().numpy()
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(np.moveaxis(np.asarray(masks, np.uint8), 0, -1)))


def save_predictions(path: str | os.PathLike, predictions: Predictions) -> None:
    """Write a predictions file atomically (format in this module's docstring)."""
    n = len(predictions.rles)
    columns = {"ref_id": predictions.ref_id, "sent_id": predictions.sent_id}
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} rows, rles has {n}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, values in columns.items():
            f[name] = np.asarray(values, np.int64)
        counts = f.create_dataset("counts", (n,), dtype=h5py.vlen_dtype(np.uint8))
        for row, rle in enumerate(predictions.rles):
            counts[row] = np.frombuffer(rle["counts"], np.uint8)
        f["size"] = np.asarray([rle["size"] for rle in predictions.rles], np.int64).reshape(n, 2)
        f.attrs.update(predictions.attrs)


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Read a file written by ``save_predictions``."""
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("ref_id", "sent_id", "counts", "size") if k not in f]
            if missing:
                raise UserError(
                    f"{path}: not a predictions file (missing {', '.join(missing)}); "
                    "write it with rsis.figures.save_predictions"
                )
            sizes = f["size"][:]
            rles = [
                {"size": [int(h), int(w)], "counts": counts.tobytes()}
                for counts, (h, w) in zip(f["counts"][:], sizes, strict=True)
            ]
            return Predictions(
                ref_id=f["ref_id"][:],
                sent_id=f["sent_id"][:],
                rles=rles,
                attrs=dict(f.attrs),
            )
    except OSError as error:
        raise UserError(f"{path}: cannot read predictions ({error})") from error


# --- panels -------------------------------------------------------------------------------


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


def referent_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 colours for referents 1..n (matplotlib's tab10, repeated past 10)."""
    palette = matplotlib.colormaps["tab10"].colors
    return (
        (np.asarray([palette[i % len(palette)] for i in range(n)]) * 255).round().astype(np.uint8)
    )


def paint_referents(image: np.ndarray, masks: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Overlay (R, H, W) masks on an (H, W, 3) uint8 image, referent r in colour r.

    Later referents are drawn over earlier ones where masks overlap.
    """
    out = image.astype(np.float32)
    for mask, color in zip(masks.astype(bool), referent_colors(len(masks)), strict=True):
        out[mask] = (1 - alpha) * out[mask] + alpha * color
    return out.round().astype(np.uint8)


def figure_size(n_columns: int, panel_hw: tuple[int, int], lines: Sequence[int]) -> tuple[int, int]:
    """(width, height) in pixels of a ``panel_figure`` with ``lines[r]`` text lines in row r."""
    height, width = panel_hw
    return (
        n_columns * width + (n_columns - 1) * GAP_PX,
        TITLE_PX + sum(height + LINE_PX * n for n in lines),
    )


def panel_figure(
    rows: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str],
    notes: Sequence[Sequence[tuple[str, np.ndarray]]],
    out: str | os.PathLike,
) -> None:
    """Write a PNG grid of equally sized RGB panels, each shown at its own pixel size.

    Args:
        rows: per row, one (H, W, 3) uint8 panel per column.
        column_titles: one title per column, drawn on top.
        notes: per row, text lines (text, RGB colour) drawn under the row's panels.
        out: destination ``.png`` (written atomically).
    """
    panel_hw = rows[0][0].shape[:2]
    if any(p.shape[:2] != panel_hw or len(r) != len(column_titles) for r in rows for p in r):
        raise ValueError(f"every row needs {len(column_titles)} panels of size {panel_hw}")
    width, height = figure_size(len(column_titles), panel_hw, [len(n) for n in notes])
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    font_pt = 0.7 * LINE_PX * 72 / DPI
    panel_h, panel_w = panel_hw
    for col, title in enumerate(column_titles):
        x = col * (panel_w + GAP_PX) + panel_w / 2
        y = 1 - TITLE_PX / 2 / height
        figure.text(x / width, y, title, ha="center", va="center", fontsize=font_pt)
    top = TITLE_PX
    for panels, lines in zip(rows, notes, strict=True):
        for col, panel in enumerate(panels):
            left = col * (panel_w + GAP_PX)
            box = [left / width, 1 - (top + panel_h) / height, panel_w / width, panel_h / height]
            axes = figure.add_axes(box)
            axes.imshow(panel, interpolation="nearest", aspect="auto")
            axes.set_axis_off()
        top += panel_h
        for text, color in lines:
            y = 1 - (top + LINE_PX / 2) / height
            figure.text(2 / width, y, text, va="center", color=color / 255, fontsize=font_pt)
            top += LINE_PX
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)


@dataclass
class Sample:
    """One image with its referents in the order fed to the model.

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


def _notes(sample: Sample) -> list[tuple[str, np.ndarray]]:
    colors = referent_colors(len(sample.expressions))
    pairs = enumerate(zip(sample.expressions, colors, strict=True))
    return [(f"{i + 1}. {text}", color) for i, (text, color) in pairs]


def qualitative_figure(samples: Sequence[Sample], out: str | os.PathLike) -> None:
    """Fig. 2/3 style: image, ground truth, prediction, error map; one row per sample."""
    rows = [
        [
            s.image,
            paint_referents(s.image, s.gt),
            paint_referents(s.image, s.pred),
            error_map(s.pred, s.gt),
        ]
        for s in samples
    ]
    titles = ["Image", "Ground truth", "Prediction", ERROR_MAP_TITLE]
    panel_figure(rows, titles, [_notes(s) for s in samples], out)


def inverse_order_figure(samples: Sequence[Sample], out: str | os.PathLike) -> None:
    """Fig. 4 style: image, ground truth, prediction in original and in inverse order."""
    if any(s.pred_inverse is None for s in samples):
        raise ValueError("inverse_order_figure needs pred_inverse for every sample")
    rows = [
        [
            s.image,
            paint_referents(s.image, s.gt),
            paint_referents(s.image, s.pred),
            paint_referents(s.image, s.pred_inverse),
        ]
        for s in samples
    ]
    titles = ["Image", "Ground truth", "Original order", "Inverse order"]
    panel_figure(rows, titles, [_notes(s) for s in samples], out)


# --- command ------------------------------------------------------------------------------


class _Cache:
    """Images and ground-truth masks of one split cache (docs/architecture.md), by id."""

    def __init__(self, file: h5py.File) -> None:
        self.file = file
        self.image_row = {int(i): r for r, i in enumerate(self.file["image_id"][:])}
        self.ref_row = {int(i): r for r, i in enumerate(self.file["ref_id"][:])}
        image_ids = self.file["image_id"][:][self.file["image_index"][:]]
        self.image_of_ref = dict(zip(self.ref_row, image_ids.tolist(), strict=True))
        self.size = (int(self.file.attrs["height"]), int(self.file.attrs["width"]))

    def image(self, image_id: int) -> np.ndarray:
        return self.file["images"][self.image_row[image_id]]

    def masks(self, ref_ids: Sequence[int]) -> np.ndarray:
        rows = [self.ref_row[r] for r in ref_ids]
        return np.concatenate([read_masks(self.file, slice(r, r + 1)) for r in rows]).astype(bool)


def _rows_by_image(predictions: Predictions, cache: _Cache, path: Path) -> dict[int, list[int]]:
    """Prediction rows per image id, in file order; checks every id is in the cache."""
    unknown = sorted(set(predictions.ref_id.tolist()) - set(cache.ref_row))
    if unknown:
        raise UserError(
            f"{path}: ref_ids {unknown[:5]} are not in the cache {cache.file.filename}; "
            "pass the cache of the split that was evaluated"
        )
    rows: dict[int, list[int]] = {}
    for row, ref_id in enumerate(predictions.ref_id.tolist()):
        rows.setdefault(cache.image_of_ref[ref_id], []).append(row)
    return rows


def _decoded(predictions: Predictions, rows: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """Predicted masks of ``rows`` at the cache size (nearest neighbour if they differ)."""
    masks = torch.from_numpy(predictions.masks(rows))
    if tuple(masks.shape[-2:]) != size:
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
    return masks.numpy()


def _best_images(
    predictions: Predictions, cache: _Cache, by_image: Mapping[int, list[int]], count: int
) -> list[int]:
    """The ``count`` images with the highest instance IoU among those with >= 2 referents."""
    scores = {}
    for image_id, rows in by_image.items():
        if len(rows) < 2:
            continue
        accumulator = MetricAccumulator(resolution="cache size")
        gt = torch.from_numpy(cache.masks(predictions.ref_id[rows].tolist()))
        accumulator.update(torch.from_numpy(_decoded(predictions, rows, cache.size)), gt)
        scores[image_id] = accumulator.summary()["metrics"]["instance_iou"]
    return sorted(scores, key=lambda i: (-scores[i], i))[:count]


def _figures_command(args: argparse.Namespace) -> None:
    if args.inverse_predictions and not args.inverse_out:
        raise UserError("--inverse-predictions needs --inverse-out (the Fig. 4 style .png)")
    with h5py.File(args.cache, "r") as f:
        _write_figures(args, _Cache(f))


def _write_figures(args: argparse.Namespace, cache: _Cache) -> None:
    predictions = load_predictions(args.predictions)
    by_image = _rows_by_image(predictions, cache, Path(args.predictions))
    image_ids = args.image_ids or _best_images(predictions, cache, by_image, args.num_images)
    missing = [i for i in image_ids if i not in by_image]
    if missing:
        raise UserError(f"{args.predictions}: no predictions for image ids {missing}")
    refer = refer_from_args(args)
    texts = {sent_id: text for sent_id, _, text in refer.sentences()}
    inverse = load_predictions(args.inverse_predictions) if args.inverse_predictions else None
    inverse_rows = {int(r): i for i, r in enumerate(inverse.ref_id)} if inverse else {}
    samples = []
    for image_id in image_ids:
        rows = by_image[image_id]
        ref_ids = predictions.ref_id[rows].tolist()
        sample = Sample(
            image=cache.image(image_id),
            gt=cache.masks(ref_ids),
            pred=_decoded(predictions, rows, cache.size),
            expressions=[texts.get(int(s), f"sent_id {s}") for s in predictions.sent_id[rows]],
        )
        if inverse is not None:
            absent = [r for r in ref_ids if r not in inverse_rows]
            if absent:
                raise UserError(f"{args.inverse_predictions}: no predictions for ref_ids {absent}")
            sample.pred_inverse = _decoded(inverse, [inverse_rows[r] for r in ref_ids], cache.size)
        samples.append(sample)
    if not samples:
        raise UserError(f"{args.predictions}: no image with at least 2 referents to show")
    qualitative_figure(samples, args.out)
    if inverse is not None:
        inverse_order_figure(samples, args.inverse_out)
    log.info("wrote figures for images %s", image_ids)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis figures``."""
    parser = subparsers.add_parser(
        "figures", help="qualitative figures (paper Fig. 2/3 and Fig. 4) from predictions"
    )
    parser.add_argument("--predictions", required=True, help="predictions .h5 (evaluation)")
    parser.add_argument("--cache", required=True, help="cache .h5 of the same split")
    add_refer_arguments(parser)
    parser.add_argument("--out", required=True, help="Fig. 2/3 style .png")
    parser.add_argument(
        "--inverse-predictions", help="predictions with the expressions fed in inverse order"
    )
    parser.add_argument("--inverse-out", help="Fig. 4 style .png (with --inverse-predictions)")
    parser.add_argument("--num-images", type=int, default=4, help="rows when picking the best")
    parser.add_argument(
        "--image-ids", type=int, nargs="+", help="images to show (default: best instance IoU)"
    )
    parser.set_defaults(func=_figures_command)
