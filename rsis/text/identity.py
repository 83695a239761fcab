"""What a trained model needs to know about its text pipeline, read from reduce outputs."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from rsis.errors import UserError
from rsis.io import open_hdf5
from rsis.text.table import EmbeddingTable

IDENTITY_KEYS = ("model", "model_hash", "embedding", "transform", "dim")


def text_identity(table: EmbeddingTable) -> dict[str, object]:
    """Text model, its file hash, the embedding kind, transform and size of a reduce output.

    Checkpoints store this with the hash of the PCA solution, so a model is never fed
    embeddings from another text pipeline or another PCA fit.
    """
    missing = [key for key in IDENTITY_KEYS if key not in table.attrs]
    if missing:
        raise UserError(f"{table.path}: attributes {missing} missing; rerun `rsis reduce`")
    identity = {key: table.attrs[key] for key in IDENTITY_KEYS}
    identity["dim"] = int(identity["dim"])
    identity["pca_hash"] = pca_hash(table.path) if table.path is not None else ""
    return {key: str(v) if isinstance(v, bytes) else v for key, v in identity.items()}


def pca_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a reduce output's PCA solution (components, then mean); "" without PCA.

    Part of the text identity: a PCA fitted on other data gives other components, so a model
    is never evaluated, exported or used with text features it was not trained on.
    """
    with open_hdf5(path, writer="rsis reduce") as f:
        if "components" not in f:
            return ""
        digest = hashlib.sha256(np.ascontiguousarray(f["components"][:]).tobytes())
        digest.update(np.ascontiguousarray(f["mean"][:]).tobytes())
        return digest.hexdigest()
