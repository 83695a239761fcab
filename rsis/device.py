"""The one choice of a torch device from a ``--device`` flag."""

from __future__ import annotations

import argparse

import torch

from rsis.errors import UserError

CPU = torch.device("cpu")


def add_device_argument(
    parser: argparse.ArgumentParser, default: str = "auto", note: str = ""
) -> None:
    """``--device``: where a command computes, a name for ``resolve_device``; ``note`` ends
    the help with what the command does with it."""
    choices = f"auto (CUDA where present, else CPU), cpu, cuda or cuda:<index> (default {default})"
    parser.add_argument("--device", default=default, help=f"{choices}; {note}" if note else choices)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU, or ``cuda:<index>``
    beyond the visible GPUs, is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"--device {name!r}: give auto, cpu, cuda or cuda:<index>") from error
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UserError(
            f"device {name!r} requested but no CUDA GPU is visible to torch {torch.__version__}; "
            "use --device cpu, or check the GPU, its driver and torch's CUDA build"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} visible GPU(s), "
            "numbered from 0"
        )
    return device
