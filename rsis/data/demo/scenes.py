"""One generated demo picture: coloured shapes laid out, painted, outlined and described."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from rsis.data.demo.grammar import TEMPLATES, Expression, Thing, choose_expressions
from rsis.data.demo.polygons import bbox, mask_to_polygons
from rsis.errors import UserError

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


FULL_RULES = SceneRules()  # the full difficulty (SceneRules' defaults)
# Named difficulties (config.yaml: demo.difficulty, rsis demo --difficulty).
DIFFICULTIES: dict[str, SceneRules] = {
    # up to 4 shapes, each of its own colour: the colour word alone finds the referent
    "colour": SceneRules(max_objects=4, colour_reuse=0.0, templates=("attribute",)),
    # up to 6 shapes, colours repeated: shape and size words must be read too. Reuse 0.9,
    # not the full difficulty's 0.5: the colour word alone ("named colour" baseline) scored
    # 64% / 73% / 56% instance IoU (val / testA / testB) at 0.5, 45% / 65% / 40% at 0.75 and
    # 41% / 54% / 31% at 0.9 (testA's crowded scenes, 3 or more of one shape, are where
    # colour tells most apart; BENCHMARKS.md, "More repeated colours")
    "shapes": SceneRules(max_objects=6, colour_reuse=0.9, templates=("attribute",)),
    # as "shapes", plus spatial ("the leftmost star") and relational expressions
    "full": FULL_RULES,
}
# What `rsis demo` and `rsis pretrain` draw unless told (config.yaml's demo.difficulty too)
DEFAULT_DIFFICULTY = "shapes"


@dataclass
class Scene:
    """One generated image: its objects in drawing order, the visible owner of each pixel."""

    image: np.ndarray  # (H, W, 3) uint8
    things: list[Thing]
    owner: np.ndarray  # (H, W) int16: index of the object seen at each pixel, -1 = background
    polygons: list[list[int]]  # one loop per object: its visible outline
    expressions: list[list[Expression]]  # per object; empty for an object that is no referent


def _sample_shapes(rng: np.random.Generator, crowded: bool, rules: SceneRules, least: int):
    """The objects' shapes: crowded scenes hold 3 or more of one shape, others at most 2 each."""
    names = list(SHAPES)
    shapes: list[str] = []
    if crowded:
        total = int(rng.integers(max(4, least), rules.max_objects + 1))
        dominant = str(rng.choice(names))
        shapes = [dominant] * int(rng.integers(3, total + 1))
        names.remove(dominant)
    else:
        total = int(rng.integers(max(2, least), rules.max_objects + 1))
    while len(shapes) < total:
        shape = str(rng.choice(names))
        if shapes.count(shape) < 2:
            shapes.append(shape)
    return shapes


def _sample_attributes(
    rng: np.random.Generator, crowded: bool, rules: SceneRules, least: int = 2
) -> list[tuple[str, str, str]]:
    """Shape, colour and size per object; no two objects share all three.

    Crowded scenes have 4 to ``max_objects`` objects, 3 or more of one shape; the others 2 to
    ``max_objects`` with at most 2 of any shape; never fewer than ``least``. With probability
    ``colour_reuse`` an object repeats a colour already used, as a distractor (always once
    every colour is taken).
    """
    triples: list[tuple[str, str, str]] = []
    for shape in _sample_shapes(rng, crowded, rules, least):
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
        shown = np.bincount(owner.ravel() + 1, minlength=index + 1)[1:]
        for _ in range(50):
            centre = rng.uniform(1 - low, (width - 1, height - 1) - high)
            full = _rasterise(outline + centre, height, width)
            box = np.concatenate([low + centre, high + centre])
            visible = shown - np.bincount(owner[full] + 1, minlength=index + 1)[1:]
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


def _things(attributes: list[tuple[str, str, str]], masks: list[np.ndarray]) -> list[Thing]:
    """Each object's attributes and the centre of its visible box."""
    things = []
    for (shape, colour, size), mask in zip(attributes, masks, strict=True):
        x, y, w, h = bbox(mask)
        things.append(Thing(shape, colour, size, x + w / 2, y + h / 2))
    return things


def _check_plan(expressions: Sequence[int] | None, rules: SceneRules) -> None:
    if expressions is None:
        return
    if not 1 <= len(expressions) <= rules.max_objects or min(expressions) < 1:
        raise UserError(
            f"a demo image needs 1 to {rules.max_objects} referents with at least one "
            f"expression each, got {list(expressions)}"
        )


def make_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    crowded: bool,
    rules: SceneRules = FULL_RULES,
    expressions: Sequence[int] | None = None,
) -> Scene:
    """Draw scenes from ``rng`` until one meets every rule, and return it.

    Rules: the layout fits; every visible part is one piece without holes; every referent has
    the expressions it needs of the ``rules.templates`` kinds, each picking it out alone.

    Args:
        expressions: how many expressions each referent gets; the referents are that many
            objects chosen at random, the other objects get none. None: every object is a
            referent with 2 or 3 expressions.
    """
    _check_plan(expressions, rules)
    least = 2 if expressions is None else len(expressions)
    margins = (MARGIN * width, MARGIN * height)
    for _ in range(MAX_TRIES):
        attributes = _sample_attributes(rng, crowded, rules, least)
        owner = _layout(attributes, rng, height, width)
        if owner is None:
            continue
        masks = [owner == i for i in range(len(attributes))]
        loops = [mask_to_polygons(m) for m in masks]
        if any(len(loop) != 1 for loop in loops):
            continue
        things = _things(attributes, masks)
        wanted = None
        if expressions is not None:
            referents = rng.choice(len(things), len(expressions), replace=False)
            wanted = dict(zip(sorted(referents.tolist()), expressions, strict=True))
        chosen = choose_expressions(things, margins, rng, rules.templates, wanted)
        if chosen is None:
            continue
        image = _paint(owner, [colour for _, colour, _ in attributes], rng)
        return Scene(image, things, owner, [loop[0] for loop in loops], chosen)
    raise UserError(
        f"could not lay out a demo scene in {height}x{width} pixels after {MAX_TRIES} tries; "
        "use a larger --height/--width (the default is 240x427)"
    )
