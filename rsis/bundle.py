"""Model bundles: everything inference needs, in one file, with no workflow cache.

A bundle holds the weights, the architecture, the text pipeline (text model name and file
hash, which embedding, the PCA solution when there is one), the input size and the longest
referent sequence. ``rsis predict`` rebuilds the exact training-time pipeline from it.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from rsis import __version__
from rsis.checkpoint import load_checkpoint, save_checkpoint, state_mismatch, trained_model
from rsis.cli import add_command, output_file
from rsis.errors import UserError
from rsis.fields import holds
from rsis.io import describe_differences
from rsis.model import RRIS, ModelConfig
from rsis.model.backbone import IMAGENET_MEAN, IMAGENET_STD
from rsis.runs import EMBEDDINGS
from rsis.text import EmbeddingTable
from rsis.text.identity import text_identity
from rsis.text.pca import PcaSolution

log = logging.getLogger(__name__)

BUNDLE_KIND = "rsis-model-bundle"
BUNDLE_FILE = "a bundle.pt written by rsis train or rsis export"
REEXPORT = "export it again (rsis export --checkpoint best.pt --text <embeddings> --out FILE)"
# Model settings with no default that is right for every bundle: each must be there.
ARCHITECTURE = ("backbone", "hidden", "text_dim", "text_transform")


def export_bundle(checkpoint: Path, text: Path, out: Path) -> None:
    """Write a bundle from a training checkpoint and the embeddings file it was trained with.

    Args:
        checkpoint: ``best.pt`` (or ``last.pt``) of a run.
        text: the reduce output the run read (PCA solutions come from it).
        out: the bundle file.
    """
    payload = load_checkpoint(checkpoint)
    if payload.get("kind") == BUNDLE_KIND:
        raise UserError(
            f"{checkpoint} is a model bundle (what `rsis export` writes), not a training "
            "checkpoint: give the run's best.pt or last.pt as --checkpoint"
        )
    table = EmbeddingTable.load(text)
    identity = text_identity(table)
    differences = describe_differences(payload["text"], identity)
    if differences:
        raise UserError(
            f"{text} is not the text pipeline {checkpoint} was trained with "
            f"({'; '.join(differences)}): give the reduce output the run trained on"
        )
    pca = None
    if identity["transform"] == "pca":
        pca = {k: torch.from_numpy(v) for k, v in PcaSolution.load(text).to_dict().items()}
    bundle = {
        "kind": BUNDLE_KIND,
        "rsis_version": __version__,
        "model": trained_model(payload, checkpoint).state_dict(),
        "model_config": payload["model_config"],
        "text": identity,
        "pca": pca,
        "input": payload["input"],
        "run": payload["run"],
        "max_referents": payload["settings"]["max_referents"],
        "source": {"checkpoint": str(checkpoint), "epoch": payload["epoch"]},
    }
    save_checkpoint(out, bundle)
    log.info("wrote %s (from %s, epoch %d)", out, checkpoint, payload["epoch"])


def _anything(value: Any) -> bool:
    return True


def _is_str(value: Any) -> bool:
    return holds(value, str)


def _positive_int(value: Any) -> bool:
    return holds(value, int) and value >= 1


def _float_tensor(value: Any, shape: tuple[int | None, ...]) -> bool:
    """Whether ``value`` is a float tensor of ``shape`` (None: a dimension of any size)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return False
    sizes = zip(shape, value.shape, strict=False)
    return value.ndim == len(shape) and all(want in (None, n) for want, n in sizes)


def _is_state(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(v, torch.Tensor) for v in value.values())


def _equals(expected: list[float]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list | tuple) and list(value) == expected


# The fields a bundle must hold (mean and std: the normalisation its network applies), each
# with what it holds and how to check it.
FIELDS: tuple[tuple[str, str, Callable[[Any], bool]], ...] = (
    ("model", "the network's state_dict (names to tensors)", _is_state),
    *((f"model_config.{key}", "the network's setting", _anything) for key in ARCHITECTURE),
    ("text.model", "the text model's name", _is_str),
    ("text.model_hash", "its weights hash", _is_str),
    ("text.embedding", f"one of {', '.join(EMBEDDINGS)}", lambda value: value in EMBEDDINGS),
    ("text.transform", "the reduce transform's name", _is_str),
    (
        "input.image_size",
        "[height, width] in pixels (two positive integers)",
        lambda value: (
            isinstance(value, list | tuple) and len(value) == 2 and all(map(_positive_int, value))
        ),
    ),
    (
        "input.mean",
        f"the mean the network subtracts, {list(IMAGENET_MEAN)}",
        _equals(list(IMAGENET_MEAN)),
    ),
    (
        "input.std",
        f"the std the network divides by, {list(IMAGENET_STD)}",
        _equals(list(IMAGENET_STD)),
    ),
    ("max_referents", "the longest referent sequence (a positive integer)", _positive_int),
)


def load_bundle(path: Path, option: str = "") -> tuple[RRIS, dict[str, Any]]:
    """Load a bundle; return the model in eval mode and the bundle's other entries.

    Every field ``rsis predict`` reads is checked first: an altered or damaged one is refused
    in one line naming the bundle and the field.

    Args:
        option: the command-line option that named ``path`` (e.g. ``--model``), for messages.
    """
    bundle = load_checkpoint(path, option, BUNDLE_FILE)
    if bundle.get("kind") != BUNDLE_KIND:
        raise UserError(
            f"{path} is not a model bundle (a training checkpoint?): "
            "make one with `rsis export --checkpoint best.pt --text <embeddings> --out FILE`"
        )
    where = f"{option} {path}".strip()
    for name, want, ok in FIELDS:
        bundle_field(bundle, where, name, want, ok)
    config = _model_config(bundle, where)
    _check_pca(bundle, where, config.text_dim)
    model = RRIS.from_config(config, weights="none")
    mismatch = state_mismatch(model, bundle["model"])
    if mismatch:
        raise UserError(
            f"{where}: field model (the weights) does not fit the network of its model_config "
            f"({mismatch}): a bundle of another rsis version, or altered; {REEXPORT}"
        )
    model.load_state_dict(bundle["model"])
    return model.eval(), bundle


def bundle_field(
    bundle: Mapping[str, Any],
    where: str,
    name: str,
    want: str,
    ok: Callable[[Any], bool] = _anything,
) -> Any:
    """The field ``name`` of a loaded bundle (dotted for a nested one: ``input.image_size``).

    Args:
        where: how messages call the bundle (``--model bundle.pt``).
        want: what the field holds, for messages.
        ok: whether a value is acceptable.

    Raises:
        UserError: the field is missing or ``ok`` refuses it; one line naming ``where``,
            the field and its value.
    """
    value: Any = bundle
    for key in name.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise _bad_field(where, name, "is missing", want)
        value = value[key]
    if not ok(value):
        raise _bad_field(where, name, f"is {_shown(value)}", want)
    return value


def _bad_field(where: str, name: str, problem: str, want: str) -> UserError:
    return UserError(f"{where}: field {name} {problem}, where a bundle holds {want}; {REEXPORT}")


def _shown(value: Any) -> str:
    """A field's value for a message, in at most a line's part."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _model_config(bundle: Mapping[str, Any], where: str) -> ModelConfig:
    """The bundle's ``model_config``, refused naming the setting ``ModelConfig`` refuses."""
    config = bundle_field(bundle, where, "model_config", "the model settings (a dict)")
    try:
        return ModelConfig.from_dict(config)
    except UserError as error:
        raise UserError(f"{where}: field model_config: {error}; {REEXPORT}") from error


def _check_pca(bundle: Mapping[str, Any], where: str, text_dim: int) -> None:
    """A PCA solution that maps the text model's embeddings to the network's ``text_dim``
    inputs when ``text.transform`` is ``pca``, and none otherwise."""
    transform = bundle["text"]["transform"]
    if transform != "pca":
        want = f"None (text.transform is {transform!r})"
        bundle_field(bundle, where, "pca", want, lambda value: value is None)
        return
    want = f"a ({text_dim}, D) float tensor (model_config.text_dim by the text model's size)"
    components = bundle_field(
        bundle, where, "pca.components", want, lambda value: _float_tensor(value, (text_dim, None))
    )
    size = components.shape[1]
    want = f"a ({size},) float tensor (one value per column of pca.components)"
    bundle_field(bundle, where, "pca.mean", want, lambda value: _float_tensor(value, (size,)))


def _export_command(args: argparse.Namespace) -> None:
    export_bundle(args.checkpoint, args.text, args.out)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis export``."""
    p = add_command(subparsers, "export")
    p.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (.pt)")
    p.add_argument("--text", type=Path, required=True, help="embeddings the run trained with")
    p.add_argument("--out", type=output_file, required=True, help="bundle file to write")
    p.set_defaults(func=_export_command)
