"""What a trained model needs to know about its text pipeline, read from reduce outputs."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from rsis.errors import UserError
from rsis.text.table import EmbeddingTable

IDENTITY_KEYS = ("model", "model_hash", "embedding", "transform", "dim")


def text_identity(table: EmbeddingTable) -> dict[str, object]:
    """Text model, its file hash, the embedding kind, transform and size of a reduce output.

    Checkpoints store this, so a model is never fed embeddings from another text pipeline.
    """
    missing = [key for key in IDENTITY_KEYS if key not in table.attrs]
    if missing:
        raise UserError(f"{table.path}: attributes {missing} missing; rerun `rsis reduce`")
    identity = {key: table.attrs[key] for key in IDENTITY_KEYS}
    identity["dim"] = int(identity["dim"])
    return {key: str(v) if isinstance(v, bytes) else v for key, v in identity.items()}


def load_pca_solution(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(components (d, D), mean (D,))`` of a PCA reduce output, to start a linear layer."""
    with h5py.File(Path(path), "r") as f:
        if "components" not in f or "mean" not in f:
            raise UserError(
                f"{path} holds no PCA solution: give a `rsis reduce --transform pca` file"
            )
        return f["components"][:], f["mean"][:]
