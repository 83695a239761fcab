"""Checkpoints: atomic save, restricted load, and refusal of incompatible ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rsis.errors import UserError
from rsis.io import atomic_path, describe_differences

FORMAT_VERSION = 2  # 2: the run spec, its settings and the input spec replace train_config


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, dicts, lists, numbers, strings) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **payload}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary objects are built)."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise UserError(f"{path}: not a readable rsis checkpoint ({error})") from error
    version = payload.get("format_version") if isinstance(payload, dict) else None
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format {version!r}, this rsis reads format {FORMAT_VERSION}; "
            "retrain or export it with a matching rsis version"
        )
    return payload


def require_compatible(
    path: Path, payload: dict[str, Any], model: dict[str, Any], text: dict[str, Any]
) -> None:
    """Refuse a checkpoint built for another architecture or text pipeline, saying what differs."""
    differences = describe_differences(payload["model_config"], model) + describe_differences(
        payload["text"], text
    )
    if differences:
        raise UserError(f"{path} does not match this configuration: " + "; ".join(differences))
