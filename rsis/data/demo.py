"""Generated demo dataset of coloured shapes, written in exactly the RefCOCO `refer` layout.

Each image holds 2 to ``max_objects`` shapes (category = shape; attributes colour and
small/big) on a textured, noisy background. Later shapes may partly cover earlier ones; every
stored polygon outlines the VISIBLE part of its shape along pixel edges, so pycocotools decodes
it to exactly the pixels painted in that shape's colour. Every shape is a referent with 2 or 3
expressions from the enabled templates: attribute ("the small red circle"), extreme ("the
leftmost triangle") and relational ("blue square left of the green star"), each resolving to
exactly that shape in its image. ``SceneRules`` sets how hard scenes and expressions are.
Positions are the centres of the visible boxes (the annotations' ``bbox``). Splits follow
RefCOCO unc: testA scenes are crowded with one shape (at least 3 of it), testB scenes never
hold more than 2 of a shape, train and val mix both kinds half and half.

Output (``<out>`` is e.g. ``resources/demo``)::

    <out>/demo/refs(unc).p      Python 3 pickle, protocol 2, list of ref dicts
    <out>/demo/instances.json   COCO images / annotations (polygons) / categories
    <out>/images/demo_<image_id>.jpg
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

from rsis.errors import UserError

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 210, 30),
    "purple": (140, 55, 190),
    "orange": (245, 135, 20),
}
# Height of a shape as a fraction of the image height, per size word.
SIZES: dict[str, tuple[float, float]] = {"small": (0.15, 0.21), "big": (0.27, 0.35)}
MIN_VISIBLE = 0.7  # every shape keeps at least this share of its own area visible
MARGIN = 0.1  # spatial words need this gap, as a fraction of the image width (x) or height (y)
JPEG_QUALITY = 90
MAX_TRIES = 200


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _unit(vertices: np.ndarray | list) -> np.ndarray:
    """Scale an outline to height 1 and centre its box on the origin (x right, y down)."""
    v = np.asarray(vertices, dtype=np.float64)
    low, high = v.min(axis=0), v.max(axis=0)
    return (v - (low + high) / 2) / (high[1] - low[1])


_CIRCLE = np.linspace(0, 2 * np.pi, 48, endpoint=False)
_ARM = 0.18
SHAPES: dict[str, np.ndarray] = {
    "circle": _unit(np.stack([np.cos(_CIRCLE), np.sin(_CIRCLE)], axis=1)),
    "square": _unit([(-1, -1), (1, -1), (1, 1), (-1, 1)]),
    "triangle": _unit([(0, -1), (1, 1), (-1, 1)]),
    "star": _unit(_star()),
    "diamond": _unit([(0, -1), (0.8, 0), (0, 1), (-0.8, 0)]),
    "cross": _unit(
        [
            (-_ARM, -0.5),
            (_ARM, -0.5),
            (_ARM, -_ARM),
            (0.5, -_ARM),
            (0.5, _ARM),
            (_ARM, _ARM),
            (_ARM, 0.5),
            (-_ARM, 0.5),
            (-_ARM, _ARM),
            (-0.5, _ARM),
            (-0.5, -_ARM),
            (-_ARM, -_ARM),
        ]
    ),
}
CATEGORIES: dict[str, int] = {name: i + 1 for i, name in enumerate(SHAPES)}

# Spatial words: (axis 0 = x / 1 = y, sign): the word selects the object with the larger sign * pos.
EXTREMES: dict[str, tuple[int, int]] = {
    "leftmost": (0, -1),
    "rightmost": (0, 1),
    "topmost": (1, -1),
    "bottommost": (1, 1),
}
RELATIONS: dict[str, tuple[int, int]] = {
    "left of": (0, -1),
    "right of": (0, 1),
    "above": (1, -1),
    "below": (1, 1),
}
ATTRIBUTES: tuple[str, ...] = ("size", "colour", "shape")
TEMPLATES: tuple[str, ...] = ("attribute", "extreme", "relation")


@dataclass(frozen=True)
class SceneRules:
    """How hard the generated scenes and expressions are.

    Attributes:
        max_objects: most objects in one image (4 to 6; crowded scenes hold at least 4).
        colour_reuse: chance that an object takes a colour already in its image (a distractor
            that only its shape, size or position tells apart); 0 keeps colours unique.
        templates: the expression kinds used, a non-empty subset of ``TEMPLATES``.
    """

    max_objects: int = 6
    colour_reuse: float = 0.5
    templates: tuple[str, ...] = TEMPLATES

    def __post_init__(self) -> None:
        if not 4 <= self.max_objects <= len(COLOURS):
            raise UserError(f"--max-objects must be 4 to {len(COLOURS)}, got {self.max_objects}")
        if not 0 <= self.colour_reuse <= 1:
            raise UserError(f"--colour-reuse must be in [0, 1], got {self.colour_reuse}")
        unknown = sorted(set(self.templates) - set(TEMPLATES))
        if unknown or not self.templates:
            raise UserError(
                f"--templates {list(self.templates)} must be a non-empty subset of {TEMPLATES}"
            )


@dataclass(frozen=True)
class Thing:
    """What an expression can say about one object: its attributes and visible-box centre."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def position(self, axis: int) -> float:
        return self.y if axis else self.x


Descriptor = tuple[str, ...]  # attribute names used, a non-empty subset of ATTRIBUTES, in order
DESCRIPTORS: tuple[Descriptor, ...] = tuple(
    subset for n in (1, 2, 3) for subset in itertools.combinations(ATTRIBUTES, n)
)


def describe(thing: Thing, descriptor: Descriptor) -> str:
    """Noun phrase naming ``thing`` by the attributes in ``descriptor`` ("big red shape")."""
    words = [getattr(thing, name) for name in ("size", "colour") if name in descriptor]
    return " ".join([*words, thing.shape if "shape" in descriptor else "shape"])


def _matches(things: list[Thing], thing: Thing, descriptor: Descriptor) -> list[int]:
    return [
        i
        for i, other in enumerate(things)
        if all(getattr(other, name) == getattr(thing, name) for name in descriptor)
    ]


def candidate_expressions(
    things: list[Thing], index: int, margins: tuple[float, float]
) -> dict[str, list[str]]:
    """Every template expression that picks out exactly ``things[index]``, by template kind.

    Args:
        things: the objects of one image.
        index: the referent.
        margins: the clear gap (pixels) a spatial word needs along x and along y.
    """
    thing = things[index]
    found: dict[str, list[str]] = {"attribute": [], "extreme": [], "relation": []}
    for descriptor in DESCRIPTORS:
        group = _matches(things, thing, descriptor)
        text = describe(thing, descriptor)
        if len(group) == 1:
            found["attribute"].append(f"the {text}")
            continue
        others = [things[i] for i in group if i != index]
        for word, (axis, sign) in EXTREMES.items():
            gap = sign * thing.position(axis) - max(sign * o.position(axis) for o in others)
            if gap >= margins[axis]:
                found["extreme"].append(f"the {word} {text}")
        for landmark_index, landmark in enumerate(things):
            if landmark_index == index:
                continue
            name = _unique_name(things, landmark_index)
            for word, (axis, sign) in RELATIONS.items():
                origin = landmark.position(axis)
                clear = sign * (thing.position(axis) - origin) >= margins[axis]
                rivals_clear = all(
                    sign * (o.position(axis) - origin) <= -margins[axis]
                    for o in others
                    if o is not landmark
                )
                if clear and rivals_clear:
                    found["relation"].append(f"{text} {word} the {name}")
    return found


def _unique_name(things: list[Thing], index: int) -> str:
    """The shortest descriptor naming ``things[index]`` alone (scenes keep full triples unique)."""
    descriptor = next(d for d in DESCRIPTORS if len(_matches(things, things[index], d)) == 1)
    return describe(things[index], descriptor)


def choose_expressions(
    things: list[Thing],
    margins: tuple[float, float],
    rng: np.random.Generator,
    templates: tuple[str, ...] = TEMPLATES,
) -> list[list[str]] | None:
    """Two or three expressions per object, mixing the ``templates`` kinds.

    Returns None if an object has fewer than 2 expressions of those kinds.
    """
    chosen = []
    for index in range(len(things)):
        candidates = candidate_expressions(things, index, margins)
        shuffled = {kind: list(rng.permutation(found)) for kind, found in candidates.items()}
        pools = [shuffled[kind] if kind in templates else [] for kind in TEMPLATES]
        pools = [pools[i] for i in rng.permutation(len(pools)) if pools[i]]
        wanted = int(rng.integers(2, 4))
        picks = [str(p.pop(0)) for _ in range(wanted) for p in pools if p][:wanted]
        if len(picks) < 2:
            return None
        chosen.append(picks)
    return chosen


def mask_to_polygons(mask: np.ndarray) -> list[list[int]]:
    """Outline a 0/1 mask exactly along pixel edges (pixel (r, c) covers [c, c+1] x [r, r+1]).

    Returns one flat ``[x0, y0, x1, y1, ...]`` loop per boundary, corners only. Outer
    boundaries run clockwise on screen (positive shoelace area with y down), holes the other
    way. Pixels touching only at a corner get separate loops, so each outer loop decodes with
    pycocotools to exactly its pixels.
    """
    m = np.pad(mask.astype(bool), 1)
    inside = m[1:-1, 1:-1]
    # Directed unit edges (y, x) -> (y, x) with the region on their right-hand side.
    sides = (
        (inside & ~m[:-2, 1:-1], (0, 0), (0, 1)),  # top
        (inside & ~m[1:-1, 2:], (0, 1), (1, 1)),  # right
        (inside & ~m[2:, 1:-1], (1, 1), (1, 0)),  # bottom
        (inside & ~m[1:-1, :-2], (1, 0), (0, 0)),  # left
    )
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for side, start, end in sides:
        for r, c in zip(*(a.tolist() for a in np.nonzero(side)), strict=True):
            edges.setdefault((r + start[0], c + start[1]), []).append((r + end[0], c + end[1]))
    loops = []
    while edges:
        first = min(edges)  # the top-left vertex left: never where two pixels touch diagonally
        vertex, previous, corners = first, None, []
        while True:
            ends = edges[vertex]
            nxt = ends[0]
            if len(ends) > 1:  # two loops touch here: turn right, (dy, dx) -> (dx, -dy) on screen
                dy, dx = vertex[0] - previous[0], vertex[1] - previous[1]
                nxt = (vertex[0] + dx, vertex[1] - dy)
            ends.remove(nxt)
            if not ends:
                del edges[vertex]
            straight = previous is not None and (
                nxt[0] - vertex[0] == vertex[0] - previous[0]
                and nxt[1] - vertex[1] == vertex[1] - previous[1]
            )
            if not straight:
                corners.append(vertex)
            previous, vertex = vertex, nxt
            if vertex == first:
                break
        loops.append([v for y, x in corners for v in (x, y)])
    return loops


def polygon_area(flat: list[int]) -> float:
    """Shoelace area of a flat polygon, positive for clockwise-on-screen loops."""
    x, y = np.asarray(flat[0::2], dtype=np.float64), np.asarray(flat[1::2], dtype=np.float64)
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


@dataclass
class Scene:
    """One generated image: its objects in drawing order, the visible owner of each pixel."""

    image: np.ndarray  # (H, W, 3) uint8
    things: list[Thing]
    owner: np.ndarray  # (H, W) int16: index of the object seen at each pixel, -1 = background
    polygons: list[list[int]]  # one loop per object: its visible outline
    expressions: list[list[str]]


def _sample_attributes(
    rng: np.random.Generator, crowded: bool, rules: SceneRules
) -> list[tuple[str, str, str]]:
    """Shape, colour and size per object; no two objects share all three.

    Crowded scenes have 4 to ``max_objects`` objects, 3 or more of one shape; the others 2 to
    ``max_objects`` with at most 2 of any shape. With probability ``colour_reuse`` an object
    repeats a colour already used, as a distractor (always once every colour is taken).
    """
    names = list(SHAPES)
    shapes: list[str] = []
    if crowded:
        total = int(rng.integers(4, rules.max_objects + 1))
        dominant = str(rng.choice(names))
        shapes = [dominant] * int(rng.integers(3, total + 1))
        names.remove(dominant)
    else:
        total = int(rng.integers(2, rules.max_objects + 1))
    while len(shapes) < total:
        shape = str(rng.choice(names))
        if shapes.count(shape) < 2:
            shapes.append(shape)
    triples: list[tuple[str, str, str]] = []
    for shape in shapes:
        while True:
            used = sorted({colour for _, colour, _ in triples})
            fresh = [colour for colour in COLOURS if colour not in used]
            reuse = used and (rng.random() < rules.colour_reuse or not fresh)
            colour = str(rng.choice(used if reuse else fresh))
            triple = (shape, colour, str(rng.choice(list(SIZES))))
            if triple not in triples:
                triples.append(triple)
                break
    return [triples[i] for i in rng.permutation(len(triples))]


def _outline(shape: str, size: str, rng: np.random.Generator, height: int) -> np.ndarray:
    """The shape's outline in pixels: turned up to 10 degrees, its box height from ``SIZES``."""
    low, high = SIZES[size]
    angle = np.deg2rad(rng.uniform(-10, 10))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    turned = _unit(SHAPES[shape] @ rotation.T)
    return turned * (rng.uniform(low, high) * height)


def _rasterise(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels whose centres PIL finds inside ``polygon``, as an (H, W) bool mask."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(x - 0.5, y - 0.5) for x, y in polygon], fill=1)
    return np.asarray(canvas, dtype=bool)


def _layout(
    attributes: list[tuple[str, str, str]], rng: np.random.Generator, height: int, width: int
) -> np.ndarray | None:
    """Place the objects in order, later over earlier; return the owner map or None on failure.

    A placement is kept when every earlier object stays at least ``MIN_VISIBLE`` visible and
    objects of one colour neither overlap nor touch (their boundary would vanish).
    """
    owner = np.full((height, width), -1, dtype=np.int16)
    areas: list[int] = []
    boxes: list[np.ndarray] = []
    for index, (shape, colour, size) in enumerate(attributes):
        outline = _outline(shape, size, rng, height)
        low, high = outline.min(axis=0), outline.max(axis=0)
        if np.any(high - low >= (width - 2, height - 2)):
            return None
        for _ in range(50):
            centre = rng.uniform(1 - low, (width - 1, height - 1) - high)
            full = _rasterise(outline + centre, height, width)
            box = np.concatenate([low + centre, high + centre])
            covered = np.bincount(owner[full] + 1, minlength=index + 1)[1:]
            visible = np.bincount(owner.ravel() + 1, minlength=index + 1)[1:] - covered
            same_colour_apart = all(
                np.any(box[:2] > boxes[j][2:] + 2) or np.any(boxes[j][:2] > box[2:] + 2)
                for j in range(index)
                if attributes[j][1] == colour
            )
            if same_colour_apart and np.all(visible >= MIN_VISIBLE * np.asarray(areas)):
                owner[full] = index
                areas.append(int(full.sum()))
                boxes.append(box)
                break
        else:
            return None
    return owner


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A greyish (H, W, 3) float background: tint, linear gradient, and stripes or blotches."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.uniform(90, 170) + rng.uniform(-12, 12, size=3)
    gradient = rng.uniform(-30, 30) * xx + rng.uniform(-30, 30) * yy
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.03, 0.12)
        texture = 12 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    else:
        coarse = rng.normal(0, 14, size=(6, 10)).astype(np.float32)
        texture = np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.BILINEAR))
    return base + (gradient + texture)[..., None]


def _paint(owner: np.ndarray, colours: list[str], rng: np.random.Generator) -> np.ndarray:
    """The picture: background, each object's pixels in its (shaded) colour, then noise."""
    height, width = owner.shape
    picture = _background(rng, height, width)
    for index, colour in enumerate(colours):
        picture[owner == index] = np.asarray(COLOURS[colour]) * rng.uniform(0.85, 1.1)
    picture += rng.normal(0, 5, size=picture.shape)
    return np.clip(np.rint(picture), 0, 255).astype(np.uint8)


def make_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    crowded: bool,
    rules: SceneRules = SceneRules(),
) -> Scene:
    """Draw scenes from ``rng`` until one meets every rule, and return it.

    Rules: the layout fits; every visible part is one piece without holes; every object has at
    least 2 expressions of the ``rules.templates`` kinds that pick it out alone.
    """
    margins = (MARGIN * width, MARGIN * height)
    for _ in range(MAX_TRIES):
        attributes = _sample_attributes(rng, crowded, rules)
        owner = _layout(attributes, rng, height, width)
        if owner is None:
            continue
        masks = [owner == i for i in range(len(attributes))]
        loops = [mask_to_polygons(m) for m in masks]
        if any(len(loop) != 1 for loop in loops):
            continue
        things = []
        for (shape, colour, size), mask in zip(attributes, masks, strict=True):
            x, y, w, h = _bbox(mask)
            things.append(Thing(shape, colour, size, x + w / 2, y + h / 2))
        expressions = choose_expressions(things, margins, rng, rules.templates)
        if expressions is None:
            continue
        image = _paint(owner, [colour for _, colour, _ in attributes], rng)
        return Scene(image, things, owner, [loop[0] for loop in loops], expressions)
    raise UserError(
        f"could not lay out a demo scene in {height}x{width} pixels after {MAX_TRIES} tries; "
        "use a larger --height/--width (the default is 240x427)"
    )


def _bbox(mask: np.ndarray) -> list[float]:
    """COCO box [x, y, w, h] of a mask, as pycocotools computes it."""
    return mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))).tolist()


@contextlib.contextmanager
def _atomic_dir(out: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``out``; it replaces ``out`` only when the block succeeds.

    An existing ``out`` must be empty or a previous demo dataset, so a mistyped ``--out`` can
    never delete unrelated files.
    """
    if out.exists() and not (out.is_dir() and _replaceable(out)):
        raise UserError(
            f"--out {out} exists and is not a demo dataset (no demo/refs(unc).p); "
            "choose another folder or remove it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if out.exists():
            old = tmp.with_suffix(".old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _replaceable(out: Path) -> bool:
    return not any(out.iterdir()) or (out / "demo" / "refs(unc).p").is_file()


def _image_record(image_id: int, file_name: str, height: int, width: int, split: str) -> dict:
    return {
        "id": image_id,
        "file_name": file_name,
        "height": height,
        "width": width,
        "split": split,
    }


def generate_demo(
    out: str | os.PathLike,
    *,
    seed: int,
    counts: Mapping[str, int],
    height: int,
    width: int,
    rules: SceneRules = SceneRules(),
) -> dict[str, int]:
    """Write the demo dataset to ``out`` (atomically) and return image counts per split.

    Image ``i`` of split ``s`` is drawn from its own generator seeded by ``(seed, s, i)``, so
    the files are byte-identical for one seed and changing one split's count leaves the
    other splits' pictures as they were (ids are numbered across splits in ``SPLITS`` order).

    Args:
        out: dataset root; gets ``demo/refs(unc).p``, ``demo/instances.json``, ``images/``.
        seed: random seed.
        counts: number of images per split (keys from ``SPLITS``).
        height: image height in pixels.
        width: image width in pixels.
        rules: how hard the scenes and expressions are.
    """
    _check_arguments(counts, height, width)
    out = Path(out)
    images, annotations, refs = [], [], []
    sent_id = 0
    jobs = [(s, i) for s in SPLITS for i in range(counts.get(s, 0))]
    with _atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        (tmp / "demo").mkdir()
        for image_id, (split, i) in enumerate(tqdm(jobs, desc="demo images", unit="img"), 1):
            rng = np.random.default_rng([seed, SPLITS.index(split), i])
            crowded = split == "testA" or (split != "testB" and rng.random() < 0.5)
            scene = make_scene(rng, height, width, crowded, rules)
            file_name = f"demo_{image_id:06d}.jpg"
            Image.fromarray(scene.image).save(
                tmp / "images" / file_name, format="JPEG", quality=JPEG_QUALITY, subsampling=0
            )
            images.append(
                {"id": image_id, "file_name": file_name, "height": height, "width": width}
            )
            for index, thing in enumerate(scene.things):
                ann_id = len(annotations) + 1
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": CATEGORIES[thing.shape],
                        "segmentation": [scene.polygons[index]],
                        "area": float(polygon_area(scene.polygons[index])),
                        "bbox": _bbox(scene.owner == index),
                        "iscrowd": 0,
                        "attributes": {"colour": thing.colour, "size": thing.size},
                    }
                )
                sentences = [
                    {"sent_id": sent_id + k, "sent": text, "raw": text, "tokens": text.split()}
                    for k, text in enumerate(scene.expressions[index])
                ]
                sent_id += len(sentences)
                refs.append(
                    {
                        "ref_id": len(refs),
                        "ann_id": ann_id,
                        "image_id": image_id,
                        "split": split,
                        "category_id": CATEGORIES[thing.shape],
                        "sent_ids": [s["sent_id"] for s in sentences],
                        "sentences": sentences,
                        "file_name": f"demo_{image_id:06d}_{ann_id}.jpg",
                    }
                )
        instances = {
            "info": {
                "description": "rsis demo: generated shapes",
                "seed": seed,
                "height": height,
                "width": width,
                "rules": dataclasses.asdict(rules),
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": i, "name": name, "supercategory": "shape"} for name, i in CATEGORIES.items()
            ],
        }
        (tmp / "demo" / "instances.json").write_text(
            json.dumps(instances, sort_keys=True, separators=(",", ":"))
        )
        with open(tmp / "demo" / "refs(unc).p", "wb") as f:
            pickle.dump(refs, f, protocol=2)
    log.info("wrote %d images, %d refs, %d sentences to %s", len(images), len(refs), sent_id, out)
    return {split: counts.get(split, 0) for split in SPLITS}


def _check_arguments(counts: Mapping[str, int], height: int, width: int) -> None:
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


def _run(args: argparse.Namespace) -> None:
    generate_demo(
        args.out,
        seed=args.seed,
        counts={
            "train": args.train_images,
            "val": args.val_images,
            "testA": args.testa_images,
            "testB": args.testb_images,
        },
        height=args.height,
        width=args.width,
        rules=SceneRules(args.max_objects, args.colour_reuse, tuple(args.templates)),
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis demo``: generate the demo dataset in the refer layout."""
    parser = subparsers.add_parser(
        "demo",
        help="generate the demo dataset (coloured shapes, refer layout)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--out", type=Path, default=Path("resources/demo"), help="dataset root")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    for split, default in (("train", 300), ("val", 40), ("testA", 40), ("testB", 40)):
        parser.add_argument(
            f"--{split.lower()}-images",
            type=int,
            default=default,
            help=f"{split} images (default {default})",
        )
    parser.add_argument("--height", type=int, default=240, help="image height (default 240)")
    parser.add_argument("--width", type=int, default=427, help="image width (default 427)")
    defaults = SceneRules()
    parser.add_argument(
        "--max-objects",
        type=int,
        default=defaults.max_objects,
        help=f"most objects per image, 4 to 6 (default {defaults.max_objects})",
    )
    parser.add_argument(
        "--colour-reuse",
        type=float,
        default=defaults.colour_reuse,
        help="chance that an object repeats a colour of its image (default "
        f"{defaults.colour_reuse}; 0 keeps colours unique)",
    )
    parser.add_argument(
        "--templates",
        nargs="+",
        choices=TEMPLATES,
        default=list(defaults.templates),
        help="expression kinds (default: all)",
    )
    parser.set_defaults(func=_run)
