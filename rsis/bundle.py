"""Model bundles: everything inference needs, in one file, with no workflow cache.

A bundle holds the weights, the architecture, the text pipeline (text model name and file
hash, which embedding, the PCA solution when there is one), the input size and the longest
referent sequence. ``rsis predict`` rebuilds the exact training-time pipeline from it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from rsis import __version__
from rsis.checkpoint import load_checkpoint, save_checkpoint, trained_model
from rsis.cli import add_command
from rsis.errors import UserError
from rsis.io import describe_differences
from rsis.model import RRIS, ModelConfig
from rsis.text import EmbeddingTable
from rsis.text.identity import text_identity
from rsis.text.pca import PcaSolution

log = logging.getLogger(__name__)

BUNDLE_KIND = "rsis-model-bundle"
BUNDLE_FILE = "a bundle.pt written by rsis train or rsis export"


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


def load_bundle(path: Path, option: str = "") -> tuple[RRIS, dict[str, Any]]:
    """Load a bundle; return the model in eval mode and the bundle's other entries.

    Args:
        option: the command-line option that named ``path`` (e.g. ``--model``), for messages.
    """
    bundle = load_checkpoint(path, option, BUNDLE_FILE)
    if bundle.get("kind") != BUNDLE_KIND:
        raise UserError(
            f"{path} is not a model bundle (a training checkpoint?): "
            "make one with `rsis export --checkpoint best.pt --text <embeddings> --out FILE`"
        )
    model = RRIS.from_config(ModelConfig.from_dict(bundle["model_config"]), weights="none")
    try:
        model.load_state_dict(bundle["model"])
    except RuntimeError as error:
        raise UserError(
            f"{path}: weights do not fit this rsis version's model ({error})"
        ) from error
    return model.eval(), bundle


def _export_command(args: argparse.Namespace) -> None:
    export_bundle(args.checkpoint, args.text, args.out)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis export``."""
    p = add_command(subparsers, "export")
    p.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (.pt)")
    p.add_argument("--text", type=Path, required=True, help="embeddings the run trained with")
    p.add_argument("--out", type=Path, required=True, help="bundle file to write")
    p.set_defaults(func=_export_command)
