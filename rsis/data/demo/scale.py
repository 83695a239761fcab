"""What the demo writes: the images of each split, and what each image must hold.

``small`` draws a given number of images per split at one size, every shape a referent with
2 or 3 expressions. ``refcoco`` writes RefCOCO's UNC counts per split (Yu et al., 2016:
19,994 images, 50,000 referents, 142,210 expressions) in COCO's common image sizes, spreading
referents over images and expressions over referents as evenly as the totals allow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rsis.errors import UserError

SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
SCALES: tuple[str, ...] = ("small", "refcoco")


@dataclass(frozen=True)
class SplitCounts:
    """Images, referents and expressions of one split."""

    images: int
    referents: int
    expressions: int


# RefCOCO, UNC splits (Yu et al., ECCV 2016, Table 1).
REFCOCO: dict[str, SplitCounts] = {
    "train": SplitCounts(16_994, 42_404, 120_624),
    "val": SplitCounts(1_500, 3_811, 10_834),
    "testA": SplitCounts(750, 1_975, 5_657),
    "testB": SplitCounts(750, 1_810, 5_095),
}
# COCO's most common image sizes (height, width), in proportions close to train2014's: a
# repeating cycle of 20 images, 640x480 landscape first.
COCO_SIZES: tuple[tuple[int, int], ...] = (
    ((480, 640),) * 9 + ((427, 640),) * 4 + ((640, 480),) * 3 + ((375, 500),) * 2
    + ((640, 427),) + ((500, 375),)
)  # fmt: skip


@dataclass(frozen=True)
class ImagePlan:
    """One image to generate: its size and the expressions each referent gets.

    ``expressions`` None: every shape is a referent with 2 or 3 expressions at random.
    """

    height: int
    width: int
    expressions: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DemoPlan:
    """Every image of every split, and the plan's description for ``instances.json``."""

    images: Mapping[str, Sequence[ImagePlan]]
    info: Mapping[str, object]


def even_shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers that differ by at most one, spread evenly."""
    return [(i + 1) * total // parts - i * total // parts for i in range(parts)]


def small_plan(counts: Mapping[str, int], height: int, width: int) -> DemoPlan:
    """``counts[split]`` images of ``height`` x ``width`` per split."""
    for name, value in (("--height", height), ("--width", width)):
        if value < 48:
            raise UserError(f"{name} must be at least 48 pixels, got {value}")
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown:
        raise UserError(f"unknown demo splits {unknown}; use {', '.join(SPLITS)}")
    for split, count in counts.items():
        if count < 0:
            raise UserError(f"--{split.lower()}-images must be 0 or more, got {count}")
    if sum(counts.values()) == 0:
        raise UserError("every --*-images count is 0: the demo dataset would be empty")
    image = ImagePlan(height, width)
    images = {split: [image] * counts.get(split, 0) for split in SPLITS}
    return DemoPlan(images, {"height": height, "width": width})


def refcoco_plan(fraction: float = 1.0) -> DemoPlan:
    """RefCOCO's counts per split, times ``fraction`` (rounded), in COCO's sizes."""
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {fraction}")
    images = {}
    for split, full in REFCOCO.items():
        counts = SplitCounts(
            *(max(1, round(n * fraction)) for n in (full.images, full.referents, full.expressions))
        )
        per_image = even_shares(counts.referents, counts.images)
        per_referent = iter(even_shares(counts.expressions, counts.referents))
        images[split] = [
            ImagePlan(
                *COCO_SIZES[i % len(COCO_SIZES)],
                tuple(next(per_referent) for _ in range(referents)),
            )
            for i, referents in enumerate(per_image)
        ]
    return DemoPlan(images, {"scale": "refcoco", "fraction": fraction})
