"""The PCA projection of text embeddings, defined once for reduce, the model and predict.

``rsis reduce`` fits it (on the train split) and applies it to every expression; a
``linear_pca`` model starts its linear layer at it; ``rsis predict`` applies it to a user's
expressions. All three use ``PcaSolution.affine``, so they compute the same numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from rsis.errors import UserError


@dataclass(frozen=True)
class PcaSolution:
    """A fitted PCA.

    Attributes:
        components: (d, D) principal axes, one per row.
        mean: (D,) mean the PCA was centred on.
    """

    components: np.ndarray
    mean: np.ndarray

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(weight (d, D), bias (d,))`` with ``project(x) = x @ weight.T + bias``."""
        return self.components, -(self.mean @ self.components.T)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """(N, D) embeddings to (N, d): ``(x - mean) @ components.T``."""
        weight, bias = self.affine()
        return vectors @ weight.T + bias

    @classmethod
    def load(cls, path: str | os.PathLike) -> PcaSolution:
        """The solution stored in a PCA reduce output (``components``, ``mean``)."""
        with h5py.File(Path(path), "r") as f:
            if "components" not in f or "mean" not in f:
                raise UserError(
                    f"{path} holds no PCA solution: give a `rsis reduce --transform pca` file"
                )
            return cls(f["components"][:], f["mean"][:])

    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays, for a bundle."""
        return {"components": self.components, "mean": self.mean}
