"""What a trained model needs to know about its text pipeline, read from reduce outputs."""

from __future__ import annotations

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
