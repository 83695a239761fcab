"""Referring segmentation metrics: overall IoU, instance IoU and prec@X, streamed per sample.

A sample is a referent scored with one sentence (or, under ``sentences: all``, one of its
sentences: every sentence of a referent is then its own sample). The rules that differ between
peers (empty union, prec@X comparison, who counts in prec@X) come from a
``rsis.protocols.Protocol``; the default is rsis's own:

- overall IoU (oIoU, micro-average) = sum of intersections / sum of unions over all samples;
- instance IoU (mIoU, macro-average) = mean over samples of intersection / union;
- a sample whose union is empty (empty prediction *and* empty ground truth) scores IoU 1;
  an empty ground truth with a non-empty prediction has I = 0 < U and scores 0;
- prec@X = share of samples with IoU >= X, for X in 0.5, 0.6, 0.7, 0.8, 0.9;
- masks are binarised with logits > 0, i.e. sigmoid probability > 0.5 (``binarize``).

Values are fractions in [0, 1]; tables print them in percent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from rsis.errors import UserError
from rsis.fields import check_fields, field_value
from rsis.io import atomic_path, read_user_json
from rsis.protocols import PRECISION_THRESHOLDS, PROTOCOLS, Protocol
from rsis.runs import RunSpec

THRESHOLD_CONVENTION = "foreground where logit > 0, i.e. sigmoid probability > 0.5"
CONVENTIONS: dict[str, str] = PROTOCOLS["rsis"].conventions()
RUN_FIELDS: tuple[str, ...] = ("embedding", "transform", "dim", "order", "batch_size")
RECORD_FIELDS: tuple[str, ...] = (
    "run",
    "split",
    "expression",
    "dataset",
    "text_model",
    "backbone",
    "image_size",
    "protocol",
    "metrics",
    "conventions",
)
# The type of each field the tables, findings and per-type results read (absent: optional).
RECORD_TYPES: dict[str, type] = {
    "split": str,
    "expression": str,
    "feed_order": str,
    "dataset": str,
    "text_model": str,
    "backbone": str,
    "image_size": list,
    "protocol": str,
    "conventions": dict,
    "breakdowns": dict,
}
METRIC_FIELDS: tuple[str, ...] = (
    "overall_iou",
    "instance_iou",
    *(f"prec@{x}" for x in PRECISION_THRESHOLDS),
    "n_referents",
    "n_samples",
)
# The JSON type of each metric: fractions, and the two counts.
METRIC_KINDS: dict[str, type] = dict.fromkeys(METRIC_FIELDS, float) | {
    "n_referents": int,
    "n_samples": int,
}


def binarize(scores: torch.Tensor, *, probabilities: bool = False) -> torch.Tensor:
    """Binarise logits (> 0) or probabilities (> 0.5); both give the same mask.

    Args:
        scores: float tensor of any shape.
        probabilities: ``scores`` are sigmoid probabilities rather than logits.
    """
    return scores > 0.5 if probabilities else scores > 0.0


def resize_scores(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, h, w) logits or probabilities bilinearly to (N, H, W) before binarising.

    Used to score at the original image size: resize the network's output to the image's
    (height, width), then ``binarize`` and compare with the mask decoded at that size.
    """
    if scores.ndim != 3:
        raise ValueError(f"expected (N, h, w) scores, got shape {tuple(scores.shape)}")
    resized = F.interpolate(
        scores[:, None].float(), size=size, mode="bilinear", align_corners=False
    )
    return resized[:, 0]


def _as_bool(masks: torch.Tensor, name: str) -> torch.Tensor:
    if masks.dtype.is_floating_point or masks.dtype.is_complex:
        raise TypeError(f"{name} must be a bool or 0/1 integer tensor; binarize scores first")
    return masks if masks.dtype == torch.bool else masks != 0


def _counts_numpy(pred: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """(N, 3) int64 intersection, prediction area, ground-truth area of CPU masks.

    numpy's count_nonzero over one referent at a time (which stays in cache) is about 10x
    faster than torch's bool reductions on CPU and 4x faster than numpy's with ``axis=``.
    """
    count = np.count_nonzero
    rows = zip(pred.flatten(1).numpy(), gt.flatten(1).numpy(), strict=True)
    return np.array([(count(p & g), count(p), count(g)) for p, g in rows], np.int64).reshape(-1, 3)


def _counts_torch(pred: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """(N, 3) int64 intersection, prediction area, ground-truth area, on the masks' device."""
    p, g = pred.flatten(1), gt.flatten(1)
    return torch.stack([(p & g).sum(1), p.sum(1), g.sum(1)], dim=1).cpu().numpy()


def score_samples(table: pd.DataFrame, protocol: Protocol) -> dict[str, float | int]:
    """Overall IoU, instance IoU, prec@X and counts of a ``per_referent`` table, by ``protocol``.

    A total union of 0 (every sample empty) gives an overall IoU of
    ``protocol.empty_union_iou``. Under ``precision_needs_target`` (ReLA's Pr@), prec@X is a
    share of the samples with a non-empty ground truth; with none, that is an error.
    """
    if table.empty:
        raise ValueError("no samples were scored")
    union = int(table["union"].sum())
    counted = table[table["gt_area"] > 0] if protocol.precision_needs_target else table
    if counted.empty:
        raise UserError(f"protocol {protocol.name}: no sample has a target, prec@X is undefined")
    ious = counted["iou"].to_numpy(np.float64)
    hits = [ious > t if protocol.strict_precision else ious >= t for t in protocol.thresholds()]
    metrics: dict[str, float | int] = {
        "overall_iou": table["intersection"].sum() / union if union else protocol.empty_union_iou,
        "instance_iou": table["iou"].mean(),
        **{f"prec@{x}": hit.mean() for x, hit in zip(PRECISION_THRESHOLDS, hits, strict=True)},
    }
    metrics = {key: float(value) for key, value in metrics.items()}
    metrics["n_referents"] = int(table["ref_id"].nunique())
    metrics["n_samples"] = len(table)
    return metrics


class MetricAccumulator:
    """Accumulates per-sample intersections and unions; never keeps masks.

    Args:
        resolution: where masks are scored, e.g. ``"240x427 (network input)"`` or
            ``"original image size"``; written into the summary's conventions.
        threshold: how predictions were binarised; written into the summary's conventions.
        protocol: the rules for empty unions and prec@X (default: rsis's).
    """

    def __init__(
        self,
        *,
        resolution: str,
        threshold: str = THRESHOLD_CONVENTION,
        protocol: Protocol = PROTOCOLS["rsis"],
    ) -> None:
        self.resolution = resolution
        self.threshold = threshold
        self.protocol = protocol
        self._ids: list[np.ndarray] = []
        self._ref_ids: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._seen = 0

    def update(
        self,
        pred: torch.Tensor,
        gt: torch.Tensor,
        ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        ref_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Add N samples.

        Args:
            pred: (N, H, W) bool (or 0/1 integer) predicted masks, on any device.
            gt: (N, H, W) ground-truth masks of the same shape.
            ids: N sample ids (``ref_id``, or ``sent_id`` when every sentence is scored);
                default: running index 0, 1, ...
            ref_ids: the N samples' referents (default: ``ids``).
        """
        if pred.shape != gt.shape or pred.ndim != 3:
            raise ValueError(
                f"pred and gt must both be (N, H, W); got {tuple(pred.shape)} and {tuple(gt.shape)}"
            )
        n = pred.shape[0]
        if ids is None:
            ids = np.arange(self._seen, self._seen + n)
        ids = _id_array(ids, n, "ids")
        pred, gt = _as_bool(pred, "pred"), _as_bool(gt, "gt")
        counts = _counts_numpy if pred.device.type == "cpu" else _counts_torch
        self._ids.append(ids)
        self._ref_ids.append(ids if ref_ids is None else _id_array(ref_ids, n, "ref_ids"))
        self._counts.append(counts(pred, gt))
        self._seen += n

    def per_referent(self) -> pd.DataFrame:
        """One row per sample: id, ref_id, intersection, union, pred_area, gt_area, iou."""
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)
        ref_ids = np.concatenate(self._ref_ids) if self._ref_ids else np.zeros(0, np.int64)
        counts = np.concatenate(self._counts) if self._counts else np.zeros((0, 3), np.int64)
        inter, pred_area, gt_area = counts.T
        union = pred_area + gt_area - inter
        empty = np.full(len(ids), self.protocol.empty_union_iou)
        table = pd.DataFrame(
            {
                "id": ids,
                "ref_id": ref_ids,
                "intersection": inter,
                "union": union,
                "pred_area": pred_area,
                "gt_area": gt_area,
                "iou": np.divide(inter, union, out=empty, where=union > 0),
            }
        )
        duplicated = table["id"][table["id"].duplicated()].unique()
        if len(duplicated):
            raise ValueError(f"sample ids scored more than once: {duplicated[:10].tolist()}")
        return table

    def summary(self, groups: Mapping[str, Mapping[int, str]] | None = None) -> dict[str, dict]:
        """``{"metrics", "conventions", "breakdowns"}`` over every sample seen so far.

        Args:
            groups: breakdown name -> (sample id -> label), e.g. ``{"category": {...}}``;
                ``breakdowns[name][label]`` holds the metrics of that label's samples.
        """
        table = self.per_referent()
        conventions = {
            **self.protocol.conventions(),
            "threshold": self.threshold,
            "resolution": self.resolution,
        }
        breakdowns = {
            name: {
                str(label): score_samples(part, self.protocol)
                for label, part in table.groupby(table["id"].map(labels), sort=True)
            }
            for name, labels in (groups or {}).items()
        }
        return {
            "protocol": self.protocol.name,
            "metrics": score_samples(table, self.protocol),
            "conventions": conventions,
            "breakdowns": breakdowns,
        }


def _id_array(ids: Sequence[int] | np.ndarray | torch.Tensor, n: int, name: str) -> np.ndarray:
    ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {ids.shape}")
    return ids


def write_metrics_json(
    path: str | os.PathLike,
    summary: Mapping[str, Mapping],
    *,
    run: Mapping[str, object],
    split: str,
    expression: str,
    dataset: str,
    text_model: str,
    backbone: str,
    image_size: Sequence[int],
    feed_order: str = "dataset",
) -> dict:
    """Write one evaluation's metrics file (format in docs/metrics.md) atomically.

    Args:
        path: destination ``.json``.
        summary: ``MetricAccumulator.summary()`` (protocol, metrics, conventions and
            optional breakdowns).
        run: the run's configuration; needs embedding, transform, dim, order, batch_size
            (more keys, such as a name or seed, are kept).
        split: evaluated split, e.g. ``val``.
        expression: ``first``, ``random`` or ``all`` (every sentence).
        dataset: dataset name, e.g. ``refcoco``.
        text_model: text encoder name.
        backbone: image encoder name.
        image_size: network input (height, width).
        feed_order: the order the referents were fed in: ``dataset`` (what the tables
            score) or ``reverse`` (the inverse-order figure's input).
    """
    record = {
        "run": dict(run),
        "split": split,
        "expression": expression,
        "feed_order": feed_order,
        "dataset": dataset,
        "text_model": text_model,
        "backbone": backbone,
        "image_size": [int(v) for v in image_size],
        "protocol": summary["protocol"],
        "metrics": dict(summary["metrics"]),
        "conventions": dict(summary["conventions"]),
        "breakdowns": dict(summary.get("breakdowns", {})),
    }
    _validate(record, Path(path))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record


def read_metrics_json(path: str | os.PathLike) -> dict:
    """Read and validate a metrics file written by ``write_metrics_json``."""
    path = Path(path)
    record = read_user_json(path, "--metrics a metrics file that rsis evaluate writes")
    _validate(record, path)
    return record


def read_result_records(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, dict]]:
    """The metrics files that fill the tables, findings and per-type results: each read and
    validated; a reverse-order evaluation or a second file of one run, seed, split and
    expression (a glob that caught ``*~reverse.json``, say) is refused, naming the files."""
    records, seen = [], {}
    for path in map(Path, paths):
        record = read_metrics_json(path)
        if record.get("feed_order", "dataset") != "dataset":
            raise UserError(
                f"{path}: the expressions were fed in {record['feed_order']} order (the "
                "inverse-order figure's evaluation), which no table scores: leave it out"
            )
        run = record["run"]
        key = (RunSpec.from_dict(run).id, run.get("seed"), record["split"], record["expression"])
        if key in seen:
            raise UserError(
                f"{seen[key]} and {path} both hold run {key[0]}, seed {key[1]}, split "
                f"{key[2]}, expression {key[3]}: pass one file each (files ending "
                "~reverse.json are the inverse-order figure's)"
            )
        seen[key] = path
        records.append((path, record))
    return records


def _validate(record: object, path: Path) -> None:
    """Raise ``UserError`` naming the file and field when ``record`` breaks the format."""
    if not isinstance(record, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(record).__name__}")
    advice = "see docs/metrics.md for the metrics file format"
    fields = {
        "": (record, RECORD_FIELDS),
        "run.": (record.get("run"), RUN_FIELDS),
        "metrics.": (record.get("metrics"), METRIC_FIELDS),
    }
    for prefix, (section, required) in fields.items():
        if prefix:
            field_value(record, prefix.rstrip("."), dict, str(path), advice)
        missing = [f"{prefix}{key}" for key in required if key not in section]
        if missing:
            raise UserError(f"{path}: missing field(s) {', '.join(missing)}; {advice}")
    given = {key: kind for key, kind in RECORD_TYPES.items() if key in record}  # rest optional
    check_fields(record, given, str(path), advice)
    check_fields(record["metrics"], METRIC_KINDS, str(path), advice, "metrics.")
    for name, labels in record.get("breakdowns", {}).items():
        field_value(record["breakdowns"], name, dict, str(path), advice, label=f"breakdowns.{name}")
        for label in labels:
            where = f"breakdowns.{name}.{label}"
            field_value(labels, label, dict, str(path), advice, label=where)
            check_fields(labels[label], METRIC_KINDS, str(path), advice, f"{where}.")
    try:
        RunSpec.from_dict(record["run"])
    except UserError as error:
        raise UserError(f"{path}: field 'run': {error}") from error
