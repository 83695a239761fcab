"""Exact polygon outlines of pixel masks, their areas and boxes, as pycocotools reads them."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

Vertex = tuple[int, int]  # (y, x) corner of the pixel grid


def _boundary_edges(mask: np.ndarray, origin: Vertex = (0, 0)) -> dict[Vertex, list[Vertex]]:
    """Directed unit edges start -> ends along the mask's boundary, the region on their right.

    ``origin`` is the (row, column) of ``mask``'s top-left pixel in the full image.
    """
    m = np.pad(mask.astype(bool), 1)
    inside = m[1:-1, 1:-1]
    sides = (
        (inside & ~m[:-2, 1:-1], (0, 0), (0, 1)),  # top
        (inside & ~m[1:-1, 2:], (0, 1), (1, 1)),  # right
        (inside & ~m[2:, 1:-1], (1, 1), (1, 0)),  # bottom
        (inside & ~m[1:-1, :-2], (1, 0), (0, 0)),  # left
    )
    edges: dict[Vertex, list[Vertex]] = {}
    for side, start, end in sides:
        for r, c in zip(*(a.tolist() for a in np.nonzero(side)), strict=True):
            r, c = r + origin[0], c + origin[1]
            edges.setdefault((r + start[0], c + start[1]), []).append((r + end[0], c + end[1]))
    return edges


def _trace_loop(edges: dict[Vertex, list[Vertex]]) -> list[Vertex]:
    """Walk (and remove) one closed loop of ``edges``; return its corners in order."""
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
            return corners


def mask_to_polygons(mask: np.ndarray) -> list[list[int]]:
    """Outline a 0/1 mask exactly along pixel edges (pixel (r, c) covers [c, c+1] x [r, r+1]).

    Returns one flat ``[x0, y0, x1, y1, ...]`` loop per boundary, corners only. Outer
    boundaries run clockwise on screen (positive shoelace area with y down), holes the other
    way. Pixels touching only at a corner get separate loops, so each outer loop decodes with
    pycocotools to exactly its pixels.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return []
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # the same loops, found faster
    edges = _boundary_edges(crop, (int(rows[0]), int(cols[0])))
    loops = []
    while edges:
        loops.append([v for y, x in _trace_loop(edges) for v in (x, y)])
    return loops


def polygon_area(flat: list[int]) -> float:
    """Shoelace area of a flat polygon, positive for clockwise-on-screen loops."""
    x, y = np.asarray(flat[0::2], dtype=np.float64), np.asarray(flat[1::2], dtype=np.float64)
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def bbox(mask: np.ndarray) -> list[float]:
    """COCO box [x, y, w, h] of a mask, as pycocotools computes it."""
    return mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))).tolist()
