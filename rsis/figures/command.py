"""``rsis figures``: the paper-style qualitative figures of one evaluation's predictions.

Reads a predictions file (``rsis.predictions``) and the dataset in the refer layout. Images
and ground truth are shown at their original resolution (images under 240 pixels tall are
enlarged to 240); the predicted masks, saved at the network's input size, are upsampled to it
(bilinear interpolation of the 0/1 mask, kept where > 0.5). Unless images are chosen, the
figure shows those with at least two referents and the highest instance IoU at that size.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rsis.cli import add_command, output_file, positive_int
from rsis.data.cache import load_resized_image, resize_mask
from rsis.data.refer import Refer, add_refer_arguments, refer_from_args
from rsis.errors import UserError
from rsis.figures.panels import Sample, inverse_order_figure, qualitative_figure
from rsis.metrics import MetricAccumulator
from rsis.predictions import Predictions, load_predictions

log = logging.getLogger(__name__)

MIN_PANEL_PX = 240


def display_size(height: int, width: int) -> tuple[int, int]:
    """Panel size of an image: its own, enlarged (aspect kept) to at least 240 pixels tall."""
    scale = max(1.0, MIN_PANEL_PX / height)
    return round(height * scale), round(width * scale)


def upsample(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(R, h, w) bool masks at ``size`` (bilinear on 0/1, > 0.5); unchanged if already there."""
    if masks.shape[-2:] == size:
        return masks
    values = torch.from_numpy(masks[:, None].astype(np.float32))
    return (F.interpolate(values, size=size, mode="bilinear")[:, 0] > 0.5).numpy()


class Scenes:
    """Images, ground truth and expressions of a refer dataset at display size, by id."""

    def __init__(self, refer: Refer) -> None:
        self.refer = refer
        self.refs = {int(r["ref_id"]): r for r in refer.refs}
        self.texts = {int(sent_id): text for sent_id, _, text in refer.sentences()}

    def size(self, image_id: int) -> tuple[int, int]:
        info = self.refer.images[image_id]
        return display_size(int(info["height"]), int(info["width"]))

    def image(self, image_id: int) -> np.ndarray:
        return load_resized_image(self.refer.image_path(image_id), *self.size(image_id))

    def gt(self, ref_ids: Sequence[int]) -> np.ndarray:
        """(R, H, W) bool ground truth of referents of one image, at its display size."""
        size = self.size(int(self.refs[ref_ids[0]]["image_id"]))
        masks = [self.refer.decode_mask(self.refs[r]["ann_id"]) for r in ref_ids]
        return np.stack([resize_mask(m, *size) for m in masks]).astype(bool)


def _rows_by_image(predictions: Predictions, scenes: Scenes, path: Path) -> dict[int, list[int]]:
    """Prediction rows per image id, in file order; checks every ref_id is in the dataset."""
    unknown = sorted(set(predictions.ref_id.tolist()) - set(scenes.refs))
    if unknown:
        raise UserError(
            f"{path}: ref_ids {unknown[:5]} are not in {scenes.refer.dataset} "
            f"({scenes.refer.split_by}); pass the dataset that was evaluated"
        )
    rows: dict[int, list[int]] = {}
    for row, ref_id in enumerate(predictions.ref_id.tolist()):
        rows.setdefault(int(scenes.refs[ref_id]["image_id"]), []).append(row)
    return rows


def _instance_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    accumulator = MetricAccumulator(resolution="original image size")
    accumulator.update(torch.from_numpy(pred), torch.from_numpy(gt))
    return accumulator.summary()["metrics"]["instance_iou"]


def _best_images(
    predictions: Predictions, scenes: Scenes, by_image: Mapping[int, list[int]], count: int
) -> list[int]:
    """The ``count`` images with the highest instance IoU among those with >= 2 referents."""
    scores = {}
    for image_id, rows in by_image.items():
        if len(rows) >= 2:
            gt = scenes.gt(predictions.ref_id[rows].tolist())
            scores[image_id] = _instance_iou(upsample(predictions.masks(rows), gt.shape[1:]), gt)
    return sorted(scores, key=lambda i: (-scores[i], i))[:count]


def _sample(
    scenes: Scenes, predictions: Predictions, rows: list[int], inverse: Predictions | None
) -> Sample:
    """The figure row of one image; ``inverse`` rows are matched to ``rows`` by ref_id."""
    ref_ids = predictions.ref_id[rows].tolist()
    gt = scenes.gt(ref_ids)
    sample = Sample(
        image=scenes.image(int(scenes.refs[ref_ids[0]]["image_id"])),
        gt=gt,
        pred=upsample(predictions.masks(rows), gt.shape[1:]),
        expressions=[scenes.texts.get(int(s), f"sent_id {s}") for s in predictions.sent_id[rows]],
    )
    if inverse is not None:
        inverse_rows = {int(r): i for i, r in enumerate(inverse.ref_id)}
        absent = [r for r in ref_ids if r not in inverse_rows]
        if absent:
            raise UserError(f"inverse-order predictions have no rows for ref_ids {absent}")
        masks = inverse.masks([inverse_rows[r] for r in ref_ids])
        sample.pred_inverse = upsample(masks, gt.shape[1:])
    return sample


def _figures_command(args: argparse.Namespace) -> None:
    if args.inverse_predictions and not args.inverse_out:
        raise UserError("--inverse-predictions needs --inverse-out (the Fig. 4 style .png)")
    predictions = load_predictions(args.predictions)
    scenes = Scenes(refer_from_args(args))
    by_image = _rows_by_image(predictions, scenes, Path(args.predictions))
    image_ids = args.image_ids or _best_images(predictions, scenes, by_image, args.num_images)
    missing = [i for i in image_ids if i not in by_image]
    if missing:
        raise UserError(f"{args.predictions}: no predictions for image ids {missing}")
    if not image_ids:
        raise UserError(f"{args.predictions}: no image with at least 2 referents to show")
    inverse = load_predictions(args.inverse_predictions) if args.inverse_predictions else None
    samples = [_sample(scenes, predictions, by_image[i], inverse) for i in image_ids]
    qualitative_figure(samples, args.out)
    if inverse is not None:
        inverse_order_figure(samples, args.inverse_out)
    log.info("wrote figures for images %s", image_ids)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis figures``."""
    parser = add_command(subparsers, "figures")
    parser.add_argument("--predictions", required=True, help="predictions .h5 (evaluation)")
    add_refer_arguments(parser)
    parser.add_argument("--out", type=output_file, required=True, help="Fig. 2/3 style .png")
    parser.add_argument(
        "--inverse-predictions", help="predictions with the expressions fed in inverse order"
    )
    parser.add_argument(
        "--inverse-out", type=output_file, help="Fig. 4 style .png (with --inverse-predictions)"
    )
    parser.add_argument(
        "--num-images", type=positive_int, default=4, help="rows when picking the best"
    )
    parser.add_argument(
        "--image-ids", type=int, nargs="+", help="images to show (default: best instance IoU)"
    )
    parser.set_defaults(func=_figures_command)
