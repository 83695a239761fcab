"""The demo's expression grammar: which template expressions pick out one object alone.

Three template kinds: attribute ("the small red circle"), extreme ("the leftmost triangle")
and relation ("blue square left of the green star"). An expression is kept only when it
denotes exactly its referent among the objects of its image.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

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
class Thing:
    """What an expression can say about one object: its attributes and visible-box centre."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def position(self, axis: int) -> float:
        return self.y if axis else self.x


@dataclass(frozen=True)
class Expression:
    """One generated expression and its template kind (one of ``TEMPLATES``)."""

    text: str
    kind: str


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


def _unique_name(things: list[Thing], index: int) -> str:
    """The shortest descriptor naming ``things[index]`` alone (scenes keep full triples unique)."""
    descriptor = next(d for d in DESCRIPTORS if len(_matches(things, things[index], d)) == 1)
    return describe(things[index], descriptor)


def _extremes(thing: Thing, others: list[Thing], text: str, margins: tuple[float, float]):
    """ "the leftmost <text>" and the like, for each word whose gap to ``others`` is clear."""
    for word, (axis, sign) in EXTREMES.items():
        gap = sign * thing.position(axis) - max(sign * o.position(axis) for o in others)
        if gap >= margins[axis]:
            yield f"the {word} {text}"


def _relations(
    things: list[Thing], index: int, others: list[Thing], text: str, margins: tuple[float, float]
):
    """ "<text> left of the <landmark>" and the like, clear of the referent's rivals ``others``."""
    thing = things[index]
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
                yield f"{text} {word} the {name}"


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
        found["extreme"].extend(_extremes(thing, others, text, margins))
        found["relation"].extend(_relations(things, index, others, text, margins))
    return found


def choose_expressions(
    things: list[Thing],
    margins: tuple[float, float],
    rng: np.random.Generator,
    templates: tuple[str, ...] = TEMPLATES,
    wanted: Mapping[int, int] | None = None,
) -> list[list[Expression]] | None:
    """Expressions per object, mixing the ``templates`` kinds round-robin in random order.

    Args:
        things: the objects of one image.
        margins: the clear gap (pixels) a spatial word needs along x and along y.
        rng: the image's random generator.
        templates: the expression kinds allowed.
        wanted: expressions per referent, by object index; other objects get none. None:
            every object is a referent with 2 or 3 at random (2 when only 2 exist).

    Returns:
        One list per object (empty for non-referents), or None when a referent has fewer
        expressions than it needs.
    """
    chosen: list[list[Expression]] = []
    for index in range(len(things)):
        if wanted is not None and index not in wanted:
            chosen.append([])
            continue
        candidates = candidate_expressions(things, index, margins)
        shuffled = {kind: list(rng.permutation(found)) for kind, found in candidates.items()}
        pools = [(kind, shuffled[kind] if kind in templates else []) for kind in TEMPLATES]
        pools = [pools[i] for i in rng.permutation(len(pools)) if pools[i][1]]
        count = int(rng.integers(2, 4)) if wanted is None else wanted[index]
        picks = [
            Expression(str(pool.pop(0)), kind) for _ in range(count) for kind, pool in pools if pool
        ][:count]
        if len(picks) < (2 if wanted is None else count):
            return None
        chosen.append(picks)
    return chosen
