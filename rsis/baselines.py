"""Baselines that read no picture, for the generated demo: what a model must beat.

Each baseline predicts, for a referent and its expression, the union of some objects of its
image (the demo's annotations know every object's shape and colour):

- ``every object``: all objects of the image;
- ``named colour``: every object of the colour the expression names;
- ``named colour and shape``: every object of the colour and shape the expression names,
  ignoring size and position words.

The colour and shape are read from the referent's own noun phrase (before a relation word
such as "left of"), with the demo grammar's vocabulary; an attribute the expression does not
name does not narrow the set. A model that only matches colour scores like ``named colour``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rsis.cli import add_command, positive_int
from rsis.data.cache import resize_mask
from rsis.data.demo.grammar import RELATIONS
from rsis.data.demo.scenes import COLOURS, SHAPES
from rsis.data.refer import Refer, add_refer_arguments, refer_from_args
from rsis.errors import UserError
from rsis.io import atomic_path
from rsis.metrics import MetricAccumulator


@dataclass(frozen=True)
class DemoObject:
    """One object of a demo image: its mask (at the scoring size), colour and shape."""

    mask: np.ndarray
    colour: str
    shape: str


@dataclass(frozen=True)
class Named:
    """The colour and shape an expression names for its referent (None: not named)."""

    colour: str | None
    shape: str | None


def named_attributes(sentence: str) -> Named:
    """The colour and shape words of the referent's noun phrase in ``sentence``.

    >>> named_attributes("blue square left of the green star")
    Named(colour='blue', shape='square')
    >>> named_attributes("the leftmost big shape")
    Named(colour=None, shape=None)
    """
    phrase = f" {sentence} "
    for relation in RELATIONS:
        phrase = phrase.split(f" {relation} ")[0]
    words = phrase.split()
    colour = next((word for word in words if word in COLOURS), None)
    shape = next((word for word in words if word in SHAPES), None)
    return Named(colour, shape)


def _union(objects: Iterable[DemoObject], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for thing in objects:
        mask |= thing.mask.astype(bool)
    return mask


Baseline = Callable[[list[DemoObject], Named], list[DemoObject]]
BASELINES: dict[str, Baseline] = {
    "every object": lambda objects, named: objects,
    "named colour": lambda objects, named: [o for o in objects if named.colour in (None, o.colour)],
    "named colour and shape": lambda objects, named: [
        o for o in objects if named.colour in (None, o.colour) and named.shape in (None, o.shape)
    ],
}


def baseline_masks(objects: list[DemoObject], sentence: str) -> Mapping[str, np.ndarray]:
    """Each baseline's predicted mask for one expression in an image of ``objects``."""
    if not objects:
        raise ValueError("a demo image has at least one object")
    named = named_attributes(sentence)
    size = objects[0].mask.shape
    return {name: _union(choose(objects, named), size) for name, choose in BASELINES.items()}


def image_objects(
    refer: Refer, size: tuple[int, int], image_ids: set[int]
) -> dict[int, list[DemoObject]]:
    """Every annotated object of the images ``image_ids``, its mask resized to ``size``."""
    objects: dict[int, list[DemoObject]] = {}
    for ann_id, ann in refer.annotations.items():
        if ann["image_id"] not in image_ids:
            continue
        attributes = ann.get("attributes") or {}
        if "colour" not in attributes:
            raise UserError(
                f"annotation {ann_id} of {refer.dataset} has no colour attribute: the "
                "baselines need the generated demo's annotations"
            )
        mask = resize_mask(refer.decode_mask(ann_id), *size)
        shape = refer.categories[ann["category_id"]]
        objects.setdefault(ann["image_id"], []).append(
            DemoObject(mask, attributes["colour"], shape)
        )
    return objects


def score_baselines(
    refer: Refer, split: str, size: tuple[int, int]
) -> dict[str, MetricAccumulator]:
    """Each baseline scored on every referent of ``split`` with its first expression.

    Masks are compared at ``size`` (the network input, as ``rsis evaluate`` scores by default).
    """
    refs = refer.refs_in_split(split)
    objects = image_objects(refer, size, {ref["image_id"] for ref in refs})
    scored = {name: MetricAccumulator(resolution="network input") for name in BASELINES}
    for ref in refs:
        truth = resize_mask(refer.decode_mask(ref["ann_id"]), *size).astype(bool)
        sentence = ref["sentences"][0]
        predicted = baseline_masks(objects[ref["image_id"]], sentence["sent"])
        for name, mask in predicted.items():
            pred, gt = torch.from_numpy(mask[None]), torch.from_numpy(truth[None])
            scored[name].update(pred, gt, ids=[ref["ref_id"]])
    return scored


def baselines_table(refer: Refer, splits: Sequence[str], size: tuple[int, int]) -> pd.DataFrame:
    """One row per baseline: instance and overall IoU (percent) on each split."""
    rows: dict[str, dict[str, object]] = {name: {"baseline": name} for name in BASELINES}
    for split in splits:
        for name, scored in score_baselines(refer, split, size).items():
            metrics = scored.summary()["metrics"]
            rows[name][f"instance_iou_{split}"] = 100 * metrics["instance_iou"]
            rows[name][f"overall_iou_{split}"] = 100 * metrics["overall_iou"]
    return pd.DataFrame(list(rows.values()))


def baselines_markdown(table: pd.DataFrame, size: tuple[int, int]) -> str:
    """``baselines.md``: the table, with what each baseline predicts."""
    shown = table.rename(columns={"baseline": "Baseline"})
    for column in shown.columns[1:]:
        shown[column] = shown[column].map(lambda value: f"{value:.2f}")
    shown.columns = [
        c.replace("instance_iou_", "Instance IoU ").replace("overall_iou_", "Overall IoU ")
        for c in shown.columns
    ]
    return (
        "# Picture-blind baselines on the demo\n\n"
        "Each baseline predicts the union of some objects of the referent's image: every "
        "object; every object of the colour its first expression names; every object of the "
        "named colour and shape (size and position words ignored). IoU in percent, scored at "
        f"{size[0]}x{size[1]} (the network input), first expression per referent. A model "
        "must beat `named colour` to show it reads more than the colour word.\n\n"
        f"{shown.to_markdown(index=False, disable_numparse=True)}\n"
    )


def _baselines_command(args: argparse.Namespace) -> None:
    refer = refer_from_args(args)
    size = (args.height, args.width)
    table = baselines_table(refer, args.split, size)
    out = Path(args.out_dir)
    with atomic_path(out / "baselines.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.2f")
    with atomic_path(out / "baselines.md") as tmp:
        tmp.write_text(baselines_markdown(table, size))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis baselines``."""
    parser = add_command(subparsers, "baselines")
    add_refer_arguments(parser)
    parser.add_argument("--split", nargs="+", required=True, help="splits to score")
    parser.add_argument(
        "--height", type=positive_int, required=True, help="scoring height (network input)"
    )
    parser.add_argument(
        "--width", type=positive_int, required=True, help="scoring width (network input)"
    )
    parser.add_argument("--out-dir", required=True, help="folder for baselines.md and .csv")
    parser.set_defaults(func=_baselines_command)
