"""``rsis features``: a frozen encoder's features of every image of a split, computed once.

A frozen encoder (``--encoder-lr 0``) runs in eval mode, so its output is a function of the
image alone: every run of the grid and every epoch would recompute the same tensors.
``rsis features`` stores them once per split and ``FeatureStore`` hands them to training
and evaluation instead of running the ResNet. Stored as float16 by default (half the size;
logits then differ from the live float32 path by rounding only: docs/training.md gives the
measured difference) or float32 (equal to the live path up to summation order).

File format (HDF5): one dataset per stage (``conv1``, ``layer1``..``layer4``) of shape
(N, C, h, w), row i for image row i of the split cache; ``image_id`` (N,) copied from the
cache; attributes ``format_version``, ``encoder_digest`` (``encoder_digest`` of the weights
used), ``weights``, ``dtype``, ``height``, ``width``, ``cache``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch

from rsis.cli import add_command, output_file
from rsis.cpu import add_threads_argument, use_threads
from rsis.data.cache_file import SplitCache
from rsis.device import CPU, add_device_argument, resolve_device
from rsis.errors import UserError
from rsis.io import atomic_path
from rsis.model.backbone import BACKBONES, STAGES, ResNetEncoder, build_backbone
from rsis.model.frozen import encoder_digest
from rsis.progress import progress_bar

log = logging.getLogger(__name__)

FEATURES_FORMAT = 1
DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "float32": torch.float32}


def cache_images(cache: Path, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """The images of a split cache in row order, as (B, 3, H, W) uint8 batches."""
    with SplitCache(cache) as split:
        count = len(split.image_id)
        for start in range(0, count, batch_size):
            rows = range(start, min(start + batch_size, count))
            images = np.stack([split.image(row) for row in rows])
            yield torch.from_numpy(images).permute(0, 3, 1, 2)


@torch.no_grad()
def write_features(
    encoder: ResNetEncoder,
    cache: Path,
    out: Path,
    *,
    dtype: str = "float16",
    weights: str = "",
    device: torch.device = CPU,
) -> int:
    """Run the eval-mode ``encoder`` over every image of ``cache`` and store its features.

    Args:
        encoder: the frozen ResNet (put in eval mode here).
        cache: a split cache written by ``rsis prepare``.
        out: the features file (written atomically).
        dtype: ``float16`` or ``float32``.
        weights: where the encoder's weights came from (recorded, not checked).
        device: where the encoder runs (in float32; the stored features are on the CPU).

    Returns:
        The number of images.
    """
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    encoder.eval().to(device)
    split = SplitCache(cache)
    image_id = split.image_id
    height, width = split.size
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        stored: list[h5py.Dataset] = []
        row = 0
        batches = cache_images(cache)
        for images in progress_bar(batches, desc=f"features {cache.stem}", unit="batch"):
            features = [x.cpu() for x in encoder.encode_images(images.to(device))]
            if not stored:
                stored = [
                    f.create_dataset(
                        name,
                        (len(image_id), *x.shape[1:]),
                        np.dtype(dtype),
                        chunks=(1, *x.shape[1:]),
                    )
                    for name, x in zip(STAGES, features, strict=True)
                ]
            for dataset, x in zip(stored, features, strict=True):
                dataset[row : row + len(x)] = x.to(DTYPES[dtype]).numpy()
            row += len(images)
        f["image_id"] = image_id
        f.attrs.update(
            format_version=FEATURES_FORMAT,
            encoder_digest=encoder_digest(encoder),
            weights=weights,
            dtype=dtype,
            height=height,
            width=width,
            cache=str(cache),
        )
    return row


class FeatureStore:
    """A split's stored features, held in memory and handed out per batch.

    Args:
        path: a file written by ``write_features``.
        cache: the split cache the batches come from (its images must be the same).
        digest: ``encoder_digest`` of the model's frozen encoder; the features must have
            been computed by exactly these weights.
    """

    def __init__(self, path: Path, cache: Path, digest: str) -> None:
        if not Path(path).is_file():
            raise UserError(f"features file {path} does not exist: run `rsis features` first")
        with h5py.File(path, "r") as f:
            if f.attrs.get("format_version") != FEATURES_FORMAT:
                raise UserError(
                    f"{path} is a features file of format {f.attrs.get('format_version')}, this "
                    f"rsis reads format {FEATURES_FORMAT}: delete it and rerun `rsis features`"
                )
            if f.attrs["encoder_digest"] != digest:
                raise UserError(
                    f"{path} was computed by another encoder (weights {f.attrs['weights']!r}) "
                    "than this model's: rerun `rsis features` with the model's --weights"
                )
            if not np.array_equal(f["image_id"][:], SplitCache(cache).image_id):
                raise UserError(
                    f"{path} holds the features of other images than {cache}: rerun "
                    f"`rsis features --cache {cache}`"
                )
            self.stages = [torch.from_numpy(f[name][:]) for name in STAGES]
        self.path = Path(path)

    def batch(self, image_rows: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        """The float32 features of the given cache rows (a batch's ``image_row``), on ``device``."""
        rows = image_rows.cpu()
        return [stage[rows].to(device, torch.float32) for stage in self.stages]


def _features_command(args: argparse.Namespace) -> None:
    use_threads(args.threads)  # subnormal floats flushed too
    if args.weights == "none":
        raise UserError(
            "--weights none: a random encoder's batch norms need calibrating before it can be "
            "frozen; make a calibrated random ResNet with `rsis pretrain --epochs 0 --out "
            "FILE` and pass --weights FILE"
        )
    encoder = build_backbone(args.backbone, args.weights)
    device = resolve_device(args.device)
    count = write_features(
        encoder, args.cache, args.out, dtype=args.dtype, weights=args.weights, device=device
    )
    log.info("wrote %s: features of %d images (%s)", args.out, count, args.dtype)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis features``."""
    p = add_command(subparsers, "features")
    p.add_argument("--cache", type=Path, required=True, help="split cache (.h5)")
    p.add_argument("--backbone", default="resnet101", help=", ".join(BACKBONES))
    p.add_argument("--weights", required=True, help="imagenet or a state_dict file")
    p.add_argument("--dtype", default="float16", help="float16 (default) or float32")
    p.add_argument("--out", type=output_file, required=True, help="features file (.h5)")
    add_device_argument(p)
    add_threads_argument(p)
    p.set_defaults(func=_features_command)
