"""The predictions file: predicted masks of one evaluation, as COCO RLEs in HDF5.

Written by ``rsis evaluate``, read by ``rsis figures``; ``rsis predict`` writes the same RLEs
into its JSON. Layout: one row per predicted referent, in the order the referents were fed,
sequence after sequence: ``ref_id``, ``sent_id`` (N,) int64 (the referent and the expression
fed for it), ``counts`` (N,) variable-length uint8 (COCO compressed RLE from
``pycocotools.mask.encode``), ``size`` (N, 2) int64 (height, width); root attributes describe
the run (split, order, expression, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import h5py
import numpy as np
import torch
from pycocotools import mask as mask_utils

from rsis.errors import UserError
from rsis.io import atomic_path

COLUMNS = ("ref_id", "sent_id", "counts", "size")


@dataclass
class Predictions:
    """Predicted masks as COCO RLEs, one row per referent, in the order they were fed."""

    ref_id: np.ndarray
    sent_id: np.ndarray
    rles: list[dict]
    attrs: dict[str, object] = field(default_factory=dict)

    def masks(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode rows to an (len(rows), H, W) bool array (all rows must share one size)."""
        return np.stack([mask_utils.decode(self.rles[r]) > 0 for r in rows])


def encode_masks(masks: np.ndarray | torch.Tensor) -> list[dict]:
    """COCO compressed RLEs of (N, H, W) bool or 0/1 masks."""
    if isinstance(masks, torch.Tensor):
        masks = masks.cpu().numpy()
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(np.moveaxis(np.asarray(masks, np.uint8), 0, -1)))


def save_predictions(path: str | os.PathLike, predictions: Predictions) -> None:
    """Write a predictions file atomically (format in this module's docstring)."""
    n = len(predictions.rles)
    columns = {"ref_id": predictions.ref_id, "sent_id": predictions.sent_id}
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} rows, rles has {n}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, values in columns.items():
            f[name] = np.asarray(values, np.int64)
        counts = f.create_dataset("counts", (n,), dtype=h5py.vlen_dtype(np.uint8))
        for row, rle in enumerate(predictions.rles):
            counts[row] = np.frombuffer(rle["counts"], np.uint8)
        f["size"] = np.asarray([rle["size"] for rle in predictions.rles], np.int64).reshape(n, 2)
        f.attrs.update(predictions.attrs)


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Read a file written by ``save_predictions``."""
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in COLUMNS if k not in f]
            if missing:
                raise UserError(
                    f"{path}: not a predictions file (missing {', '.join(missing)}); "
                    "write it with rsis evaluate (rsis.predictions.save_predictions)"
                )
            sizes = f["size"][:]
            rles = [
                {"size": [int(h), int(w)], "counts": counts.tobytes()}
                for counts, (h, w) in zip(f["counts"][:], sizes, strict=True)
            ]
            return Predictions(
                ref_id=f["ref_id"][:],
                sent_id=f["sent_id"][:],
                rles=rles,
                attrs=dict(f.attrs),
            )
    except OSError as error:
        raise UserError(f"{path}: cannot read predictions ({error})") from error
