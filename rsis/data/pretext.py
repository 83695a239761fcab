"""Generated demo scenes with per-pixel labels (shape, colour, size) for encoder pretraining.

The scenes come from the demo generator's own scene code (``make_scene``), drawn at the
demo's picture size and resized to the network input like ``rsis prepare`` does (bilinear
image, nearest-neighbour labels), but from generator streams the demo dataset never uses:
image ``i`` of stream ``s`` is drawn from ``default_rng([seed, s, i])`` and the demo writer
uses streams 0 to 3 (its splits), so no train, val or test picture is ever reproduced.
The JPEG round trip of the dataset files is skipped (invisible after the 5x downsizing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from rsis.data.cache import resize_rgb
from rsis.data.demo.scale import SPLITS
from rsis.data.demo.scenes import COLOURS, SHAPES, SIZES, SceneRules, make_scene
from rsis.progress import progress_bar

PRETRAIN_STREAM = len(SPLITS)  # scenes the encoder is pretrained on
PROBE_STREAM = len(SPLITS) + 1  # scenes the linear probes are fitted and scored on
# Label maps: 0 is background, objects count from 1 in the order of these tuples.
TASKS: dict[str, tuple[str, ...]] = {
    "shape": tuple(SHAPES),
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
}


@dataclass(frozen=True)
class LabelledScenes:
    """Pictures and their per-pixel labels.

    Attributes:
        images: (N, 3, H, W) uint8 RGB.
        labels: (N, len(TASKS), H, W) int64, one map per task in ``TASKS`` order; 0 marks
            background, k > 0 the k-th value of that task.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


def render_scenes(
    *,
    seed: int,
    stream: int,
    count: int,
    picture_size: tuple[int, int],
    input_size: tuple[int, int],
    rules: SceneRules,
    first: int = 0,
) -> LabelledScenes:
    """Draw scenes ``first .. first + count - 1`` of ``stream`` and label every pixel.

    Args:
        seed: the generator seed.
        stream: ``PRETRAIN_STREAM`` or ``PROBE_STREAM`` (never a demo split's 0..3).
        count: number of scenes.
        picture_size: (height, width) the scenes are drawn at (the demo's 240x427).
        input_size: (height, width) they are resized to (the cache's, e.g. 48x84).
        rules: how the scenes are composed (the demo dataset's ``SceneRules``).
        first: index of the first scene (disjoint ranges give disjoint scene sets).
    """
    if stream < len(SPLITS):
        raise ValueError(f"stream {stream} belongs to the demo split {SPLITS[stream]}")
    height, width = input_size
    images = np.empty((count, height, width, 3), np.uint8)
    labels = np.empty((count, len(TASKS), height, width), np.int64)
    lookups = [{name: k + 1 for k, name in enumerate(values)} for values in TASKS.values()]
    for row in progress_bar(range(count), desc="pretext scenes", unit="scene", leave=False):
        rng = np.random.default_rng([seed, stream, first + row])
        scene = make_scene(rng, *picture_size, bool(rng.random() < 0.5), rules)
        images[row] = resize_rgb(Image.fromarray(scene.image), height, width)
        owner = Image.fromarray(scene.owner.astype(np.int32))
        owner = np.asarray(owner.resize((width, height), Image.Resampling.NEAREST))
        for task, (name, lookup) in enumerate(zip(TASKS, lookups, strict=True)):
            values = np.asarray([0] + [lookup[getattr(t, name)] for t in scene.things])
            labels[row, task] = values[owner + 1]
    return LabelledScenes(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels))
