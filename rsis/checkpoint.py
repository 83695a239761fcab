"""Checkpoints: atomic save, restricted load, and refusal of incompatible ones."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsis.errors import UserError
from rsis.io import atomic_path, describe_differences
from rsis.model import RRIS, ModelConfig

# 2: the run spec, its settings and the input spec replace train_config. 3: a frozen encoder
# that its weights file rebuilds is left out, named by ``encoder_digest`` (2 still reads).
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
RSIS_FILES = (
    "a checkpoint or bundle written by rsis train or rsis export (best.pt, last.pt, bundle.pt)"
)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, dicts, lists, numbers, strings) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **payload}, tmp)


def load_checkpoint(path: Path, option: str = "", expected: str = RSIS_FILES) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary objects are built).

    Args:
        option: the command-line option that named ``path`` (e.g. ``--model``), for messages.
        expected: what ``path`` should be, for messages (``give <expected>``).
    """
    name = f"{option} {path}".strip()
    if Path(path).is_dir():
        raise UserError(f"{name} is a folder: give {expected}")
    if not Path(path).is_file():
        raise UserError(f"{name}: no such file; give {expected}")
    payload = read_torch_file(path, name, expected)
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise UserError(
            f"{name}: a torch file, but not a checkpoint or bundle of rsis (it has no "
            f"format_version); give {expected}"
        )
    version = payload["format_version"]
    if version not in READABLE_VERSIONS:
        raise UserError(
            f"{name}: checkpoint format {version!r}, this rsis reads formats "
            f"{', '.join(map(str, READABLE_VERSIONS))}; "
            "retrain or export it with a matching rsis version"
        )
    return payload


def read_torch_file(path: Path, name: str, expected: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain data only.

    Args:
        name: how messages call ``path`` (e.g. ``--model bundle.pt``).
        expected: what ``path`` should be, for messages (``give <expected>``).

    Raises:
        UserError: one line naming ``name``, why it cannot be read and ``expected``.
    """
    try:
        with warnings.catch_warnings():  # the error below says all; torch adds its own advice
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise  # the command names the file and says to check it
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise UserError(f"{name}: {_unreadable(error)}; give {expected}") from error


def _unreadable(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line."""
    text = str(error)
    unsafe = re.search(r"GLOBAL ([\w.]+)", text)
    if unsafe:
        return (
            f"refused unread: it would build the Python object {unsafe.group(1)}, which no "
            "rsis file or state_dict holds; do not load it unrestricted"
        )
    return "incomplete (a copy or download cut short?) or not a torch file"


def state_mismatch(module: nn.Module, state: Mapping[str, Any]) -> str:
    """Why the state dict ``state`` read from a file does not load into ``module``, in one
    line: how many keys are missing, unexpected or of another shape, the first of each named;
    "" when it loads."""
    own = module.state_dict()
    # Batch norm fills in a missing step counter when it loads (files saved before torch
    # 0.4.1 have none, torchvision's first ImageNet weights among them).
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [key for key in state if key not in own]
    reshaped = [key for key in own if key in state and not _same_shape(state[key], own[key])]
    parts = [f"keys missing: {len(missing)} (first {missing[0]})"] if missing else []
    parts += [f"unexpected keys: {len(unexpected)} (first {unexpected[0]})"] if unexpected else []
    if reshaped:
        key = reshaped[0]
        found = list(state[key].shape) if isinstance(state[key], torch.Tensor) else "no tensor"
        parts.append(
            f"keys of another shape: {len(reshaped)} (first {key}, {found} in the file, "
            f"{list(own[key].shape)} expected)"
        )
    return ", ".join(parts)


def _same_shape(value: Any, expected: torch.Tensor) -> bool:
    """Whether ``value`` is a tensor of ``expected``'s shape."""
    return isinstance(value, torch.Tensor) and value.shape == expected.shape


def require_compatible(
    path: Path, payload: dict[str, Any], model: dict[str, Any], text: dict[str, Any]
) -> None:
    """Refuse a checkpoint built for another architecture or text pipeline, saying what differs."""
    differences = describe_differences(payload["model_config"], model) + describe_differences(
        payload["text"], text
    )
    if differences:
        raise UserError(f"{path} does not match this configuration: " + "; ".join(differences))


def load_trained_model(path: Path, text: dict[str, Any]) -> tuple[RRIS, dict[str, Any]]:
    """Rebuild the model of a training checkpoint, checked against the text pipeline ``text``
    (``text_identity``); return it and the checkpoint's other entries."""
    payload = load_checkpoint(path)
    require_compatible(
        path, payload, ModelConfig.from_dict(payload["model_config"]).to_dict(), text
    )
    return trained_model(payload, path), payload


def trained_model(payload: dict[str, Any], path: Path) -> RRIS:
    """The model of a loaded training checkpoint (read from ``path``); a frozen encoder left
    out of it is rebuilt from the weights file it was trained with."""
    digest = payload.get("encoder_digest")
    if digest is None:
        model = RRIS.from_config(payload["model_config"], weights="none")
    else:
        try:
            model = RRIS.from_config(payload["model_config"])
        except UserError as error:
            raise UserError(
                f"{path} leaves its frozen encoder to the weights it was trained with "
                f"({payload['model_config']['weights']}), which cannot be loaded here: {error}"
            ) from error
    model.load_trained_state(payload["model"], digest, path)
    return model
