"""``EmbeddingTable``: a reduced embedding file, looked up by sentence id."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsis.errors import UserError
from rsis.io import open_hdf5, plain_attrs


@dataclass(frozen=True)
class EmbeddingTable:
    """One float32 vector per sentence id.

    Args:
        sent_id: (N,) int64 sentence ids, sorted ascending.
        vectors: (N, dim) float32, row ``i`` belongs to ``sent_id[i]``.
        attrs: the file's attributes (model, transform, dim, ...).
        path: the file it came from, named in errors.
    """

    sent_id: np.ndarray
    vectors: np.ndarray
    attrs: dict[str, object] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingTable:
        """Read a ``<embedding>~<transform>~<dim>.h5`` file written by ``rsis reduce``."""
        path = Path(path)
        with open_hdf5(path, writer="rsis reduce") as f:
            if "embedding" not in f or "sent_id" not in f or not len(f["sent_id"]):
                raise UserError(
                    f"{path} has no 'embedding'/'sent_id' rows: give a file written by "
                    "`rsis reduce`"
                )
            sent_id = f["sent_id"][:].astype(np.int64)
            vectors = f["embedding"][:].astype(np.float32)
            attrs = plain_attrs(f.attrs)
        broken = ~np.isfinite(vectors).all(axis=1)
        if broken.any():
            raise UserError(
                f"{path}: {int(broken.sum())} embeddings hold NaN or infinite values (sent_id "
                f"{sent_id[broken][:5].tolist()}); rerun `rsis embed` and `rsis reduce`"
            )
        order = np.argsort(sent_id, kind="stable")
        return cls(sent_id[order], vectors[order], attrs, path)

    @property
    def dim(self) -> int:
        """Length of every vector."""
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.sent_id)

    def lookup(self, sent_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Vectors of ``sent_ids``, as a (len(sent_ids), dim) float32 array.

        Raises:
            UserError: some ids are not in the table (the file belongs to other data).
        """
        wanted = np.asarray(sent_ids, dtype=np.int64).reshape(-1)
        rows = np.minimum(np.searchsorted(self.sent_id, wanted), len(self.sent_id) - 1)
        found = self.sent_id[rows] == wanted
        if not found.all():
            raise UserError(
                f"sent_id {wanted[~found][:10].tolist()} not in {self.path}: it was built from "
                "other expressions; rerun tokenize/embed/reduce for this dataset"
            )
        return self.vectors[rows]
