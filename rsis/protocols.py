"""Scoring protocols: rsis's own convention and those of LAVT, CRIS and ReLA/GRES.

Each peer publishes numbers scored under its own rules (read from its evaluation code, see
docs/metrics.md). A ``Protocol`` names every rule that changes a number, so one set of
predictions can be scored the way each peer scores its own, and every metrics file and table
says which rules made its numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from rsis.errors import UserError

PRECISION_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
RESOLUTIONS: tuple[str, ...] = ("network", "original", "480x480")
SENTENCES: tuple[str, ...] = ("first", "random", "all")


@dataclass(frozen=True)
class Protocol:
    """The rules that turn predicted masks into published numbers.

    Args:
        name: ``rsis``, ``lavt``, ``cris`` or ``rela``.
        source: the peer's file the rules are read from.
        resolution: ``network`` (rsis's network input, 240x427 by default), ``original``
            (the image's size) or ``480x480`` (LAVT's and ReLA's network input); masks are
            resized there with nearest neighbour, aspect ratio not kept.
        sentences: ``first``, ``random`` (one seeded sentence) or ``all`` (every sentence of
            every referent is its own sample).
        empty_union_iou: IoU of a sample whose prediction and ground truth are both empty.
        strict_precision: prec@X counts IoU > X (CRIS) rather than IoU >= X.
        float32_thresholds: the thresholds are float32 values of ``arange(0.5, 1.0, 0.1)``
            (CRIS: 0.6000000238, 0.6999999881, ...), not the decimals.
        precision_needs_target: prec@X is a share of the samples with a non-empty ground
            truth only (ReLA's Pr@), not of all samples.
        probability_threshold: a pixel is foreground where sigmoid(logit) > this; applies
            where rsis scores its own logits (``rsis evaluate``), not to binary masks.
        binarize: how the peer binarises its own output, in words.
        reported: the metrics the peer publishes, as (our key, the peer's name).
    """

    name: str
    source: str
    resolution: str
    sentences: str
    empty_union_iou: float
    strict_precision: bool
    float32_thresholds: bool
    precision_needs_target: bool
    probability_threshold: float
    binarize: str
    reported: tuple[tuple[str, str], ...]

    def thresholds(self) -> np.ndarray:
        """The prec@X thresholds as the peer compares them (float64 values)."""
        if self.float32_thresholds:
            return torch.arange(0.5, 1.0, 0.1).double().numpy()
        return np.asarray(PRECISION_THRESHOLDS, np.float64)

    @property
    def logit_threshold(self) -> float:
        """The logit equivalent of ``probability_threshold`` (0 for 0.5)."""
        p = self.probability_threshold
        return math.log(p / (1.0 - p))

    def size(self, network_hw: tuple[int, int], image_hw: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) masks are scored at, for one image."""
        if self.resolution == "network":
            return network_hw
        if self.resolution == "original":
            return image_hw
        height, width = self.resolution.split("x")
        return int(height), int(width)

    def with_overrides(
        self, *, resolution: str | None = None, sentences: str | None = None
    ) -> Protocol:
        """This protocol scored at another resolution or over other sentences."""
        if resolution is not None and resolution not in RESOLUTIONS:
            raise UserError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        if sentences is not None and sentences not in SENTENCES:
            raise UserError(f"sentences must be one of {SENTENCES}, got {sentences!r}")
        changes = {"resolution": resolution, "sentences": sentences}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def conventions(self, network_hw: tuple[int, int] = (240, 427)) -> dict[str, str]:
        """Every rule in words, for metrics files and table captions."""
        resized = "; masks resized with nearest neighbour, aspect ratio not kept"
        where = {
            "network": f"{network_hw[0]}x{network_hw[1]} (rsis network input){resized}",
            "original": "original image size",
            "480x480": f"480x480 (LAVT's and ReLA's network input){resized}",
        }[self.resolution]
        sentences = {
            "first": "the first sentence of every referent",
            "random": "one seeded random sentence of every referent",
            "all": "every sentence of every referent, each its own sample",
        }[self.sentences]
        compare = ">" if self.strict_precision else ">="
        values = ", ".join(f"{t:.10g}" for t in self.thresholds())
        over = "samples with a non-empty ground truth" if self.precision_needs_target else "samples"
        return {
            "protocol": f"{self.name} ({self.source})",
            "resolution": where,
            "sentences": sentences,
            "overall_iou": "oIoU: sum of intersections / sum of unions over all samples",
            "instance_iou": "mIoU: mean over samples of intersection / union",
            "empty_union": (
                f"a sample with empty prediction and empty ground truth scores IoU "
                f"{self.empty_union_iou:g}"
            ),
            "precision": f"prec@X: share of {over} with IoU {compare} X, X in {values}",
            "threshold": (
                f"rsis logits: sigmoid > {self.probability_threshold:g} "
                f"(logit > {self.logit_threshold:.4g}); the peer: {self.binarize}"
            ),
            "reported": ", ".join(f"{peer} = {key}" for key, peer in self.reported),
            "units": "fractions in [0, 1]",
        }


_PREC = tuple((f"prec@{x}", f"prec@{x}") for x in PRECISION_THRESHOLDS)
_RSIS = Protocol(
    name="rsis",
    source="rsis/metrics.py, the paper's protocol",
    resolution="network",
    sentences="first",
    empty_union_iou=1.0,
    strict_precision=False,
    float32_thresholds=False,
    precision_needs_target=False,
    probability_threshold=0.5,
    binarize="logit > 0",
    reported=(("instance_iou", "Instance IoU"), ("overall_iou", "Overall IoU"), *_PREC),
)
_LAVT = replace(
    _RSIS,
    name="lavt",
    source="LAVT test.py",
    resolution="480x480",
    sentences="all",
    empty_union_iou=0.0,
    binarize="argmax over 2 classes",
    reported=(("overall_iou", "oIoU"), ("instance_iou", "mIoU"), *_PREC),
)
PROTOCOLS: dict[str, Protocol] = {
    "rsis": _RSIS,
    "lavt": _LAVT,
    "cris": replace(
        _LAVT,
        name="cris",
        source="CRIS engine/engine.py",
        resolution="original",
        strict_precision=True,
        float32_thresholds=True,
        probability_threshold=0.35,
        binarize="sigmoid > 0.35",
        reported=(("instance_iou", "IoU"), *_PREC),
    ),
    "rela": replace(
        _LAVT,
        name="rela",
        source="ReLA gres_model/evaluation/refer_evaluation.py",
        empty_union_iou=1.0,
        precision_needs_target=True,
        binarize="argmax over 2 classes; no-target when the predicted mask is empty",
        reported=(
            ("overall_iou", "cIoU"),
            ("instance_iou", "gIoU"),
            *((f"prec@{x}", f"Pr@{x}") for x in (0.7, 0.8, 0.9)),
        ),
    ),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name is a ``UserError`` listing the choices."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
