"""``rsis bench loader``: training data-loader throughput from the HDF5 cache vs direct decoding.

Both paths deliver the same batches (images and masks resized to H x W, a random expression per
referent): the cached path reads ``SequenceDataset``; the direct path decodes the JPEG and the
polygons of every referent for every item, as a loader without a cache must.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from rsis.cli import non_negative_int, positive_int
from rsis.data.cache import (
    SequenceDataset,
    collate_sequences,
    load_resized_image,
    resize_mask,
    write_cache,
)
from rsis.data.refer import Refer, add_refer_arguments, refer_from_args


class _ConstantText:
    """Embedding stand-in: the benchmark measures images and masks, not text lookups."""

    def lookup(self, sent_ids: np.ndarray) -> np.ndarray:
        return np.zeros((len(sent_ids), 64), np.float32)


class DirectDataset(Dataset):
    """Decode JPEG + polygons for every item: the loader one would write without a cache."""

    def __init__(self, refer: Refer, split: str, height: int, width: int) -> None:
        self.refer, self.height, self.width = refer, height, width
        self.sequences = refer.sequences(split)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        refs = self.sequences[index]
        image = load_resized_image(
            self.refer.image_path(refs[0]["image_id"]), self.height, self.width
        )
        masks = np.stack(
            [
                resize_mask(self.refer.decode_mask(r["ann_id"]), self.height, self.width)
                for r in refs
            ]
        )
        sent_ids = np.asarray([r["sent_ids"][0] for r in refs], np.int64)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1),
            "masks": torch.from_numpy(masks),
            "text": torch.from_numpy(_ConstantText().lookup(sent_ids)),
            "ref_id": torch.tensor([r["ref_id"] for r in refs]),
            "sent_id": torch.from_numpy(sent_ids),
            "image_row": torch.tensor(index),
        }


def images_per_second(dataset: Dataset, batch_size: int, workers: int, min_images: int) -> float:
    """Iterate shuffled batches until ``min_images`` images were delivered; return images/s."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_sequences,
        persistent_workers=workers > 0,
    )
    next(iter(loader))  # start workers and open files before timing
    images, start = 0, time.perf_counter()
    while images < min_images:
        for batch in loader:
            images += len(batch["image"])
            if images >= min_images:
                break
    return images / (time.perf_counter() - start)


def _bench_loader_command(args: argparse.Namespace) -> None:
    """Build the cache of one split in a temporary folder and time both loaders."""
    refer = refer_from_args(args)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / f"{args.split}.h5"
        write_cache(refer, args.split, cache, args.height, args.width)
        cached = SequenceDataset(cache, _ConstantText(), order="random", expression="random")
        direct = DirectDataset(refer, args.split, args.height, args.width)
        # A small split (the real 9-image sample) is repeated so batches are full.
        repeat = max(1, -(-args.min_sequences // len(cached)))
        cached, direct = ConcatDataset([cached] * repeat), ConcatDataset([direct] * repeat)
        fast = _best(cached, args, args.images_cached)
        slow = _best(direct, args, args.images_direct)
    print(
        f"split {args.split}: {len(cached) // repeat} sequences (x{repeat}), "
        f"{args.height}x{args.width}, batch {args.batch_size}, workers tried {args.workers}"
    )
    print(f"cached (HDF5) : {fast[0]:8.1f} images/s ({fast[1]} workers)")
    print(f"direct (JPEG + polygons): {slow[0]:8.1f} images/s ({slow[1]} workers)")
    print(f"ratio cached/direct: {fast[0] / slow[0]:.1f}x (each path at its best worker count)")


def _best(dataset: Dataset, args: argparse.Namespace, images: int) -> tuple[float, int]:
    """The highest images/s over ``args.workers``, with the worker count that gave it."""
    return max(
        (images_per_second(dataset, args.batch_size, workers, images), workers)
        for workers in args.workers
    )


def register(bench: argparse._SubParsersAction) -> None:
    """Add ``rsis bench loader``."""
    p = bench.add_parser("loader", help="data-loader images/s: HDF5 cache vs direct decoding")
    add_refer_arguments(p, required=False)
    p.set_defaults(refs_root="resources/demo", dataset="demo", images="resources/demo/images")
    p.add_argument("--split", default="train")
    p.add_argument("--height", type=positive_int, default=240)
    p.add_argument("--width", type=positive_int, default=427)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument(
        "--workers",
        type=non_negative_int,
        nargs="+",
        default=[0, 2],
        help="DataLoader worker counts to try; each path is reported at its best",
    )
    p.add_argument(
        "--min-sequences",
        type=non_negative_int,
        default=256,
        help="repeat a smaller split to this size",
    )
    p.add_argument(
        "--images-cached", type=positive_int, default=4000, help="images timed, cached path"
    )
    p.add_argument(
        "--images-direct", type=positive_int, default=400, help="images timed, direct path"
    )
    p.set_defaults(func=_bench_loader_command)
