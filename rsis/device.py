"""The one choice of a torch device from a ``--device`` flag."""

from __future__ import annotations

import torch

from rsis.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"--device {name!r}: give auto, cpu, cuda or cuda:<index>") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but no CUDA GPU is visible; use --device cpu")
    return device
