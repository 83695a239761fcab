"""``rsis reduce``: pick an embedding and reduce it (none, or PCA fitted on one split only)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from sklearn.decomposition import PCA

from rsis.cli import add_command, output_file
from rsis.errors import UserError
from rsis.io import atomic_path, check_identity, open_hdf5, plain_attrs, require_members
from rsis.runs import EMBEDDINGS, NATIVE
from rsis.text.pca import PcaSolution
from rsis.text.tokenize import read_tokens

log = logging.getLogger(__name__)

TRANSFORMS = ("none", "pca")
# Attributes of an ``rsis embed`` output that reduce reads or copies.
EMBEDDINGS_ATTRS = ("model", "model_revision", "model_hash", "hidden_size", "tokens_hash")


@dataclass
class Reduction:
    """Reduced vectors, and the fitted PCA when the transform is ``pca``."""

    embedding: np.ndarray
    pca: PCA | None = None


def parse_dim(transform: str, dim: str) -> int | None:
    """Check ``--dim`` against ``--transform``: ``none`` takes ``native``, ``pca`` an integer.

    Returns:
        the PCA dimension, or None for the native (unreduced) embedding.
    """
    if transform == "none":
        if dim != NATIVE:
            raise UserError(f"--transform none keeps the model's size: give --dim {NATIVE}")
        return None
    if not dim.isdigit() or int(dim) < 1:
        raise UserError(f"--transform {transform} needs --dim as a positive integer, got {dim!r}")
    return int(dim)


def reduce_embeddings(
    vectors: np.ndarray, split: np.ndarray, transform: str, dim: int | None, fit_split: str
) -> Reduction:
    """Reduce ``vectors`` (N, D); PCA is fitted on the rows whose split is ``fit_split`` only.

    Args:
        vectors: (N, D) embeddings of every split.
        split: (N,) split name of each row.
        transform: ``none`` or ``pca``.
        dim: PCA dimension (None for ``none``).
        fit_split: the split the PCA is fitted on (``train`` in the paper's setting).
    """
    if transform == "none":
        return Reduction(vectors.astype(np.float32))
    fit_rows = split == fit_split
    n_fit = int(fit_rows.sum())
    if n_fit == 0:
        raise UserError(
            f"--fit-split {fit_split!r} has no expressions (language.fit_split in "
            f"config.yaml); splits present: {', '.join(sorted(set(split.tolist())))}"
        )
    if dim > min(n_fit, vectors.shape[1]):
        raise UserError(
            f"PCA to {dim} dims needs at least {dim} expressions in the fit split and an "
            f"embedding of at least {dim} dims; split {fit_split!r} has {n_fit} expressions "
            f"and the embedding has {vectors.shape[1]} dims: lower --dim (in config.yaml: "
            "grid.table1.dims, grid.table2.dim or the dim of a grid.extra run)"
        )
    pca = PCA(n_components=dim, svd_solver="full").fit(vectors[fit_rows])
    log.info(
        "PCA fitted on %d %s expressions: %d dims keep %.1f%% of the variance",
        n_fit,
        fit_split,
        dim,
        100 * pca.explained_variance_ratio_.sum(),
    )
    solution = PcaSolution(pca.components_, pca.mean_)
    return Reduction(solution.project(vectors).astype(np.float32), pca)


def read_embeddings(path: Path, embedding: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """sent_id, the ``embedding`` vectors and the attributes of an ``rsis embed`` output.

    Raises:
        UserError: ``path`` is missing, not HDF5, or not an embeddings file (another step's
            output); the message names it and ``rsis embed``.
    """
    with open_hdf5(path, writer="rsis embed") as f:
        require_members(
            f,
            ("sent_id", *EMBEDDINGS),
            EMBEDDINGS_ATTRS,
            kind="an embeddings file",
            writer="rsis embed",
        )
        return f["sent_id"][:], f[embedding][:], plain_attrs(f.attrs)


def _reduce_command(args: argparse.Namespace) -> None:
    """Reduce one embedding of an embeddings file and write ``<embedding>~<transform>~<dim>``."""
    dim = parse_dim(args.transform, args.dim)
    table = read_tokens(args.tokens)
    sent_id, vectors, source = read_embeddings(args.embeddings, args.embedding)
    check_identity(
        args.embeddings, source, {"tokens_hash": table.attrs["tokens_hash"]}, writer="rsis embed"
    )
    if not np.array_equal(sent_id, table.sent_id):
        raise UserError(f"{args.embeddings} and {args.tokens} list different sentences")
    reduction = reduce_embeddings(vectors, table.split, args.transform, dim, args.fit_split)
    with atomic_path(args.out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("sent_id", data=sent_id)
        f.create_dataset("embedding", data=reduction.embedding)
        if reduction.pca is not None:
            pca = reduction.pca
            f.create_dataset("components", data=pca.components_.astype(np.float32))
            f.create_dataset("mean", data=pca.mean_.astype(np.float32))
            f.create_dataset("explained_variance", data=pca.explained_variance_.astype(np.float32))
            f.create_dataset(
                "explained_variance_ratio", data=pca.explained_variance_ratio_.astype(np.float32)
            )
        f.attrs.update(
            {k: source[k] for k in ("model", "model_revision", "model_hash", "tokens_hash")},
            hidden_size=source["hidden_size"],
            embedding=args.embedding,
            transform=args.transform,
            dim=reduction.embedding.shape[1],
            fit_split=args.fit_split if reduction.pca is not None else "",
        )
    log.info("wrote %s (%d x %d)", args.out, *reduction.embedding.shape)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis reduce``."""
    parser = add_command(subparsers, "reduce")
    parser.add_argument("--embeddings", type=Path, required=True, help="from rsis embed")
    parser.add_argument("--tokens", type=Path, required=True, help="from rsis tokenize (splits)")
    parser.add_argument("--embedding", choices=EMBEDDINGS, required=True)
    parser.add_argument("--transform", choices=TRANSFORMS, required=True)
    parser.add_argument("--dim", required=True, help=f"'{NATIVE}' for none, an integer for pca")
    parser.add_argument(
        "--fit-split", default="train", help="split the PCA is fitted on (default %(default)s)"
    )
    parser.add_argument(
        "--out", type=output_file, required=True, help="<embedding>~<transform>~<dim>.h5"
    )
    parser.set_defaults(func=_reduce_command)
