"""``rsis score``: score any model's predicted masks on a refer-layout split, under a protocol.

Input: a JSON list of ``{"sent_id": int, "segmentation": COCO RLE at the image's original
size}`` (``ref_id`` optional; when given it must be the sentence's referent). The protocol
(``rsis.protocols``) picks the resolution, the sentences, the empty-union rule and the prec@X
comparison; the output is a metrics JSON and a Markdown table whose caption states every rule.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from rsis.breakdowns import sample_labels
from rsis.cli import add_command, output_file, positive_int
from rsis.data.cache import resize_mask
from rsis.data.refer import (
    Refer,
    add_refer_arguments,
    decode_segmentation,
    refer_from_args,
    rle_counts_problem,
)
from rsis.errors import UserError
from rsis.fields import field_value, holds
from rsis.io import atomic_path, read_user_json, write_texts
from rsis.metrics import MetricAccumulator
from rsis.progress import progress_bar
from rsis.protocols import PROTOCOLS, RESOLUTIONS, Protocol, get_protocol

log = logging.getLogger(__name__)


def encode_rle(mask: np.ndarray | torch.Tensor) -> dict:
    """A 0/1 (H, W) mask as COCO compressed RLE with a JSON-ready ``counts`` string."""
    array = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    rle = mask_utils.encode(array)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_predictions_json(
    path: str | os.PathLike, samples: Iterable[tuple[int, int | None, dict]]
) -> None:
    """Write ``rsis score``'s input format atomically: one entry per (sent_id, ref_id, rle);
    a ref_id of None is left out (``rsis score`` takes it from the dataset)."""
    entries = [
        {"sent_id": int(sent_id), "segmentation": rle}
        | ({} if ref_id is None else {"ref_id": int(ref_id)})
        for sent_id, ref_id, rle in samples
    ]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(entries) + "\n")


PREDICTIONS = '--predictions a JSON list of {"sent_id", "segmentation": COCO RLE}'


def _is_size(size: object) -> bool:
    """Whether ``size`` is an RLE's ``[height, width]``: two non-negative integers."""
    return isinstance(size, list) and len(size) == 2 and all(holds(v, int) and v >= 0 for v in size)


def read_predictions_json(path: str | os.PathLike) -> dict[int, dict]:
    """sent_id -> entry of a predictions file; a malformed or repeated entry is a UserError."""
    path = Path(path)
    entries = read_user_json(path, PREDICTIONS)
    if not isinstance(entries, list):
        raise UserError(
            f"{path}: expected a JSON list of predictions, got {type(entries).__name__}"
        )
    found: dict[int, dict] = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UserError(
                f"{path}: entry {position} is {entry!r:.40}, not an object; give {PREDICTIONS}"
            )
        where = f"{path}, entry {position}"
        sent_id = field_value(entry, "sent_id", int, where, f"give {PREDICTIONS}")
        if "ref_id" in entry:  # optional: checked against the sentence's ref below
            field_value(entry, "ref_id", int, where, f"give {PREDICTIONS}")
        rle = entry.get("segmentation")
        if not (
            isinstance(rle, dict)
            and _is_size(rle.get("size"))
            and isinstance(rle.get("counts"), str | list)
        ):
            raise UserError(
                f"{path}: sent_id {sent_id} has no COCO RLE segmentation (size [height, width] "
                "and counts, a string or a list of integers); write it with "
                "pycocotools.mask.encode"
            )
        if sent_id in found:
            raise UserError(f"{path}: sent_id {sent_id} is predicted more than once")
        found[sent_id] = entry
    return found


def select_sentences(refs: Sequence[dict], sentences: str) -> list[tuple[int, dict]]:
    """(sent_id, ref) of every sample a protocol scores: each referent's first, or all."""
    if sentences == "first":
        return [(ref["sent_ids"][0], ref) for ref in refs]
    if sentences == "all":
        return [(sent_id, ref) for ref in refs for sent_id in ref["sent_ids"]]
    raise UserError(f"rsis score scores the first or all sentences, not {sentences!r}")


def _check_ids(
    refer: Refer, refs: Sequence[dict], predictions: dict[int, dict], path: Path
) -> None:
    """Every predicted sent_id must belong to the scored splits, with its own ref_id."""
    in_splits = {sent_id: ref for ref in refs for sent_id in ref["sent_ids"]}
    in_dataset = {sent_id for ref in refer.refs for sent_id in ref["sent_ids"]}
    for sent_id, entry in predictions.items():
        if sent_id not in in_dataset:
            raise UserError(f"{path}: sent_id {sent_id} is not a sentence of {refer.dataset}")
        if sent_id not in in_splits:
            raise UserError(f"{path}: sent_id {sent_id} is not in the scored split(s)")
        ref_id = entry.get("ref_id", in_splits[sent_id]["ref_id"])
        if ref_id != in_splits[sent_id]["ref_id"]:
            raise UserError(
                f"{path}: sent_id {sent_id} belongs to ref_id {in_splits[sent_id]['ref_id']}, "
                f"not {ref_id!r}"
            )


def _undecodable(path: Path, sent_id: int, why: object) -> UserError:
    """The error for a predicted RLE that cannot be decoded, and why."""
    return UserError(
        f"{path}: sent_id {sent_id} has an undecodable RLE ({why}); write it with "
        "pycocotools.mask.encode"
    )


def _check_masks(
    refer: Refer, samples: Sequence[tuple[int, dict]], predictions: dict[int, dict], path: Path
) -> None:
    """Every scored mask must be at its image's original size, and an uncompressed RLE's
    counts must add up to it (checked before scoring starts)."""
    for sent_id, ref in samples:
        image = refer.images[ref["image_id"]]
        rle = predictions[sent_id]["segmentation"]
        if rle["size"] != [image["height"], image["width"]]:
            raise UserError(
                f"{path}: sent_id {sent_id} has a {'x'.join(map(str, rle['size']))} mask, but "
                f"its image is {image['height']}x{image['width']}: predictions must be at the "
                "original image size"
            )
        problem = rle_counts_problem(rle, image["height"], image["width"])
        if problem:
            raise _undecodable(path, sent_id, problem)


def _decode_prediction(entry: dict, image_hw: tuple[int, int], path: Path) -> np.ndarray:
    """Decode one predicted mask; a compressed RLE must round-trip (pycocotools decodes some
    corrupt strings, e.g. an empty one, to arbitrary pixels instead of failing)."""
    rle = entry["segmentation"]
    try:
        mask = decode_segmentation(rle, *image_hw)
    except (TypeError, ValueError, OverflowError) as error:
        raise _undecodable(path, entry["sent_id"], error) from error
    if isinstance(rle["counts"], str) and encode_rle(mask)["counts"] != rle["counts"]:
        raise UserError(
            f"{path}: sent_id {entry['sent_id']} has a corrupt RLE (it does not describe a "
            f"{image_hw[0]}x{image_hw[1]} mask); write it with pycocotools.mask.encode"
        )
    return mask


def _at(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A mask at the protocol's size (nearest neighbour, as the cache's ground truth)."""
    resized = mask if mask.shape == size else resize_mask(mask, *size)
    return torch.from_numpy(resized.astype(bool))[None]


def score_predictions(
    refer: Refer,
    splits: Sequence[str],
    predictions: dict[int, dict],
    protocol: Protocol,
    *,
    network_hw: tuple[int, int] = (240, 427),
    path: Path = Path("predictions"),
) -> tuple[MetricAccumulator, dict]:
    """Score ``predictions`` (``read_predictions_json``) on ``splits`` of ``refer``.

    Sentences in the splits that the protocol does not score (the 2nd, 3rd... under
    ``first``) may be predicted and are left out; a sentence it scores must be predicted.

    Returns:
        The accumulator (samples keyed by sent_id) and its summary with breakdowns.
    """
    refs = [ref for split in splits for ref in refer.refs_in_split(split)]
    _check_ids(refer, refs, predictions, path)
    samples = select_sentences(refs, protocol.sentences)
    missing = [sent_id for sent_id, _ in samples if sent_id not in predictions]
    if missing:
        raise UserError(
            f"{path}: sent_id {missing[0]} has no prediction ({len(missing)} of the "
            f"{len(samples)} sentences protocol {protocol.name} scores are missing)"
        )
    _check_masks(refer, samples, predictions, path)
    where = protocol.conventions(network_hw)["resolution"]
    accumulator = MetricAccumulator(
        resolution=where, threshold="binary masks as given", protocol=protocol
    )
    truth: dict[int, np.ndarray] = {}
    for sent_id, ref in progress_bar(samples, desc=f"score {protocol.name}", unit="sentence"):
        image = refer.images[ref["image_id"]]
        image_hw = (int(image["height"]), int(image["width"]))
        if ref["ann_id"] not in truth:
            truth[ref["ann_id"]] = refer.decode_mask(ref["ann_id"])
        pred = _decode_prediction(predictions[sent_id], image_hw, path)
        size = protocol.size(network_hw, image_hw)
        accumulator.update(
            _at(pred, size), _at(truth[ref["ann_id"]], size), ids=[sent_id], ref_ids=[ref["ref_id"]]
        )
    left_out = len(predictions) - len(samples)
    if left_out:
        log.info("%d predicted sentences are not scored by protocol %s", left_out, protocol.name)
    groups = sample_labels(refer, [sent_id for sent_id, _ in samples])
    return accumulator, accumulator.summary(groups)


def markdown_table(record: dict) -> str:
    """The protocol's reported metrics (in percent) overall and per breakdown, captioned."""
    protocol = get_protocol(record["protocol"])
    columns = [peer if peer == key else f"{peer} ({key})" for key, peer in protocol.reported]
    header = ["", *columns, "samples", "referents"]
    rows = [("all", record["metrics"])]
    for name, parts in record["breakdowns"].items():
        rows += [(f"{name}: {label}", metrics) for label, metrics in parts.items()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, metrics in rows:
        values = [f"{100 * metrics[key]:.2f}" for key, _ in protocol.reported]
        counts = [str(metrics["n_samples"]), str(metrics["n_referents"])]
        lines.append("| " + " | ".join([label, *values, *counts]) + " |")
    rules = "; ".join(  # the JSON's units (fractions) are not this table's (percent)
        f"{key}: {text}" for key, text in record["conventions"].items() if key != "units"
    )
    caption = (
        f"{record['dataset']} ({record['split_by']}) {', '.join(record['splits'])}, "
        f"predictions {record['predictions']}, protocol {record['protocol']}, in percent. "
        f"Conventions: {rules}."
    )
    return "\n".join([*lines, "", f"Table: {caption}", ""])


def _score_command(args: argparse.Namespace) -> None:
    if args.out.suffix in (".md", ".csv"):
        raise UserError(
            f"--out {args.out}: the .md table and the .csv are written beside it, so give "
            "the metrics file a .json name"
        )
    protocol = get_protocol(args.protocol).with_overrides(resolution=args.resolution)
    refer = refer_from_args(args)
    predictions = read_predictions_json(args.predictions)
    accumulator, summary = score_predictions(
        refer,
        args.split,
        predictions,
        protocol,
        network_hw=tuple(args.network_size),
        path=args.predictions,
    )
    record = {
        "dataset": refer.dataset,
        "split_by": refer.split_by,
        "splits": list(args.split),
        "predictions": str(args.predictions),
        **summary,
    }
    per_sample = accumulator.per_referent().rename(columns={"id": "sent_id"})
    write_texts(
        {
            args.out: json.dumps(record, indent=2) + "\n",
            args.out.with_suffix(".md"): markdown_table(record),
            args.out.with_suffix(".csv"): per_sample.to_csv(index=False),
        }
    )
    metrics = summary["metrics"]
    log.info(
        "%s %s, protocol %s: oIoU %.4f, mIoU %.4f over %d samples (%d referents)",
        refer.dataset,
        "+".join(args.split),
        protocol.name,
        metrics["overall_iou"],
        metrics["instance_iou"],
        metrics["n_samples"],
        metrics["n_referents"],
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis score``."""
    p = add_command(subparsers, "score")
    add_refer_arguments(p)
    p.add_argument("--split", nargs="+", required=True, help="split(s) scored together, e.g. val")
    p.add_argument(
        "--predictions",
        type=Path,
        required=True,
        help='JSON list of {"sent_id", "segmentation": RLE at original size}',
    )
    p.add_argument(
        "--protocol", choices=tuple(PROTOCOLS), default="rsis", help="see docs/metrics.md"
    )
    p.add_argument(
        "--resolution",
        choices=RESOLUTIONS,
        help="score at another resolution than the protocol's (e.g. original)",
    )
    p.add_argument(
        "--network-size",
        type=positive_int,
        nargs=2,
        default=(240, 427),
        metavar=("H", "W"),
        help="rsis's network input, where protocol rsis scores",
    )
    p.add_argument(
        "--out",
        type=output_file,
        required=True,
        help="metrics .json; the .md table and the per-sample .csv are written beside it",
    )
    p.set_defaults(func=_score_command)
