"""Per-split HDF5 cache of resized images and masks, and the torch Dataset that reads it.

The file format is documented in docs/architecture.md. Images are resized to (height, width)
without keeping the aspect ratio (bilinear), as the paper's 240x427 input does; masks are
decoded at the original size and resized with nearest neighbour.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from rsis.cli import add_command, output_file, positive_int
from rsis.data.cache_file import (
    CACHE_FORMAT,
    ImageReferents,
    SplitCache,
)
from rsis.data.refer import Refer, add_refer_arguments, refer_from_args
from rsis.errors import UserError
from rsis.io import atomic_path, require_free_space
from rsis.progress import progress_bar
from rsis.runs import TRAIN_ORDERS

log = logging.getLogger(__name__)

ORDERS = (*TRAIN_ORDERS, "reverse")  # reverse: evaluation only (the paper's Fig. 4)
EXPRESSIONS = ("first", "random", "all")


def open_rgb(path: Path, upright: bool = False) -> Image.Image:
    """Decode an image as a loaded RGB Pillow image; a file Pillow cannot read is a
    ``UserError`` naming it.

    Args:
        upright: turn the pixels as the file's EXIF orientation tag says, as photo viewers
            show it (a phone's portrait photo is often stored landscape with such a tag);
            otherwise keep the stored pixel order, which dataset annotations (COCO, RefCOCO)
            refer to.
    """
    try:
        with Image.open(path) as image:
            return _eight_bit_rgb(ImageOps.exif_transpose(image) if upright else image, path)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        reason = str(error).rstrip(". ")
        raise UserError(
            f"cannot decode image {path}: {reason}; replace it with a readable JPEG or PNG"
        ) from error


def _eight_bit_rgb(image: Image.Image, path: Path) -> Image.Image:
    """``image`` as 8-bit RGB. Pillow's own conversion clips 16-bit grey (a 16-bit PNG) at 255,
    which turns most of it white, so those keep their top 8 bits; 32-bit integer or float
    pixels have no range to map from and are refused."""
    if image.mode.startswith("I;16"):
        top_bits = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(top_bits, "L").convert("RGB")
    if image.mode in ("I", "F"):
        raise UserError(
            f"image {path} has 32-bit {'float' if image.mode == 'F' else 'integer'} pixels "
            f"(Pillow mode {image.mode}), whose range rsis cannot know: save it as 8-bit RGB"
        )
    return image.convert("RGB")


def resize_rgb(image: Image.Image, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an RGB image to (height, width, 3) uint8, aspect ratio not kept."""
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.array(resized, dtype=np.uint8)


def load_resized_image(
    path: Path, height: int, width: int, expected_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Read an image as RGB (stored pixel order) and resize it to (height, width, 3) uint8.

    Args:
        expected_hw: the (height, width) instances.json gives the image; a decoded image of
            another size (a rotated or replaced file) is refused, since its masks would no
            longer line up with it.
    """
    image = open_rgb(path)
    found = (image.height, image.width)
    if expected_hw is not None and found != tuple(expected_hw):
        raise UserError(
            f"image {path} decodes to {found[0]}x{found[1]} but instances.json gives "
            f"{expected_hw[0]}x{expected_hw[1]}: its masks would not line up. Replace "
            "it with the original file (a rotated or re-encoded copy?)"
        )
    return resize_rgb(image, height, width)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a 0/1 mask to (height, width)."""
    resized = Image.fromarray(mask * 255).resize((width, height), Image.Resampling.NEAREST)
    return (np.asarray(resized) > 127).astype(np.uint8)


def write_cache(refer: Refer, split: str, out: Path, height: int, width: int) -> dict[str, int]:
    """Write the cache of one split; return counts (images, referents, skipped empty masks).

    Images are visited in the order their first referent appears in the refs file, and an
    image's referents stay in dataset order. A referent whose mask is empty at the original
    size (zero-area annotation) cannot be segmented: it is skipped, counted and logged.

    Args:
        refer: the loaded dataset.
        split: exact split name.
        out: destination ``.h5`` file (written to a temporary name, then renamed).
        height: cached image height.
        width: cached image width.
    """
    per_image = refer.refs_by_image(split)
    index: dict[str, list] = {k: [] for k in ("ref_id", "ann_id", "category_id", "image_index")}
    areas: list[float] = []
    sent_ids: list[int] = []
    sent_ptr = [0]
    image_ids: list[int] = []
    skipped_empty = skipped_degenerate = 0
    referents = sum(len(refs) for refs in per_image.values())
    pixels = height * width * 3 * len(per_image) + height * -(-width // 8) * referents
    require_free_space(out, int(pixels * 1.05) + 2**20)  # data, plus index and HDF5 overhead
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        images = f.create_dataset(
            "images",
            (0, height, width, 3),
            np.uint8,
            chunks=(1, height, width, 3),
            maxshape=(None, height, width, 3),
        )
        packed_width = -(-width // 8)
        masks = f.create_dataset(
            "masks",
            (0, height, packed_width),
            np.uint8,
            chunks=(1, height, packed_width),
            maxshape=(None, height, packed_width),
        )
        for image_id, refs in progress_bar(per_image.items(), desc=f"cache {split}", unit="img"):
            decodable = [ref for ref in refs if not _degenerate(refer, ref)]
            skipped_degenerate += len(refs) - len(decodable)
            decoded = [(ref, refer.decode_mask(ref["ann_id"])) for ref in decodable]
            kept = [(ref, mask) for ref, mask in decoded if mask.any()]
            skipped_empty += len(decoded) - len(kept)
            if not kept:
                continue
            row = len(image_ids)
            image_ids.append(image_id)
            images.resize(row + 1, axis=0)
            original_hw = (refer.images[image_id]["height"], refer.images[image_id]["width"])
            path = refer.image_path(image_id)
            images[row] = load_resized_image(path, height, width, original_hw)
            first = masks.shape[0]
            masks.resize(first + len(kept), axis=0)
            resized = np.stack([resize_mask(mask, height, width) for _, mask in kept])
            masks[first:] = np.packbits(resized, axis=-1)
            for ref, mask in kept:
                for key in ("ref_id", "ann_id", "category_id"):
                    index[key].append(ref[key])
                index["image_index"].append(row)
                areas.append(float(mask.sum()))
                sent_ids.extend(ref["sent_ids"])
                sent_ptr.append(len(sent_ids))
        if not image_ids:
            raise UserError(f"split {split!r} of {refer.dataset} has no referent with a mask")
        for key, values in index.items():
            f[key] = np.asarray(values, np.int64)
        f["area"] = np.asarray(areas, np.float64)
        f["sent_ids"] = np.asarray(sent_ids, np.int64)
        f["sent_ptr"] = np.asarray(sent_ptr, np.int64)
        f["image_id"] = np.asarray(image_ids, np.int64)
        f["image_hw"] = np.asarray(
            [(refer.images[i]["height"], refer.images[i]["width"]) for i in image_ids], np.int32
        )
        f["file_name"] = [refer.images[i]["file_name"] for i in image_ids]
        f.attrs.update(
            split=split,
            dataset=refer.dataset,
            split_by=refer.split_by,
            height=height,
            width=width,
            mask_packing="np.packbits(axis=-1), big-endian bit order",
            format_version=CACHE_FORMAT,
            source=str(refer.root / refer.dataset),
        )
    if skipped_empty:
        log.warning("%s %s: skipped %d empty masks", refer.dataset, split, skipped_empty)
    if skipped_degenerate:
        log.warning(
            "%s %s: skipped %d degenerate segmentations", refer.dataset, split, skipped_degenerate
        )
    return {
        "images": len(image_ids),
        "referents": len(areas),
        "skipped_empty": skipped_empty,
        "skipped_degenerate": skipped_degenerate,
    }


def _degenerate(refer: Refer, ref: dict) -> bool:
    """True (and a log line naming the ann_id) when a ref's segmentation cannot be decoded."""
    problem = refer.segmentation_problem(ref["ann_id"])
    if problem:
        log.warning("skipping ann_id %d (ref_id %d): %s", ref["ann_id"], ref["ref_id"], problem)
    return problem is not None


class TextLookup(Protocol):
    """Anything that maps sentence ids to embedding rows (rsis.text.EmbeddingTable)."""

    def lookup(self, sent_ids: np.ndarray) -> np.ndarray: ...


class SequenceDataset(torch.utils.data.Dataset):
    """Sequences of up to ``max_referents`` referents of one image, read from a split cache.

    Args:
        cache_path: a file written by ``write_cache``.
        embeddings: maps sent_ids to embedding rows.
        order: ``area`` (largest first), ``random`` (new permutation each epoch), ``dataset``,
            or ``reverse`` (dataset order reversed, for the paper's inverse-order figure).
        expression: ``first`` (the paper's evaluation), ``random`` (a new one each epoch) or
            ``all``: pass k (``set_pass``) gives every referent its k-th sentence, wrapping
            around for referents with fewer (evaluation scores sentence k only where k < count).
        max_referents: longest sequence; an image with more referents gives several sequences.
        seed: makes the random order and expression choice reproducible per (epoch, item).
    """

    def __init__(
        self,
        cache_path: str | Path,
        embeddings: TextLookup,
        *,
        order: str = "dataset",
        expression: str = "first",
        max_referents: int = 6,
        seed: int = 0,
    ) -> None:
        if order not in ORDERS:
            raise UserError(f"referent order must be one of {ORDERS}, got {order!r}")
        if expression not in EXPRESSIONS:
            raise UserError(f"expression must be one of {EXPRESSIONS}, got {expression!r}")
        self.cache = SplitCache(cache_path)
        self.embeddings = embeddings
        self.order = order
        self.expression = expression
        self.max_referents = max_referents
        self.seed = seed
        self.epoch = 0
        self.sentence_pass = 0
        self._items: list[tuple[ImageReferents, int]] = [
            (group, chunk)
            for group in self.cache.referents_by_image()
            for chunk in range(-(-(group.stop - group.start) // max_referents))
        ]

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random order and expressions the next items use."""
        self.epoch = epoch

    def set_pass(self, sentence_pass: int) -> None:
        """Choose which sentence (k-th, wrapping around) ``expression="all"`` feeds."""
        self.sentence_pass = sentence_pass

    def passes(self) -> int:
        """Passes that feed every sentence once under ``all``: the most sentences of a referent."""
        return int(np.diff(self.cache.sent_ptr).max())

    def __len__(self) -> int:
        return len(self._items)

    def _referent_order(self, group: ImageReferents, rng: np.random.Generator) -> np.ndarray:
        refs = np.arange(group.start, group.stop)
        if self.order == "area":
            return refs[np.argsort(-self.cache.area[refs], kind="stable")]
        if self.order == "random":
            return rng.permutation(refs)
        if self.order == "reverse":
            return refs[::-1]
        return refs

    def _sentence(self, ref: int, rng: np.random.Generator) -> int:
        sentences = self.cache.sentences(ref)
        if self.expression == "all":
            pick = self.sentence_pass % len(sentences)
        else:
            pick = 0 if self.expression == "first" else rng.integers(len(sentences))
        return int(sentences[pick])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        group, chunk = self._items[index]
        # One generator per (seed, epoch, image): every chunk of an image sees one permutation.
        rng = np.random.default_rng([self.seed, self.epoch, group.image_row])
        ordered = self._referent_order(group, rng)
        refs = ordered[chunk * self.max_referents : (chunk + 1) * self.max_referents]
        sent_ids = np.asarray([self._sentence(int(r), rng) for r in refs], np.int64)
        image = self.cache.image(group.image_row)
        masks = self.cache.masks(slice(group.start, group.stop), refs - group.start)
        return {
            "image": torch.from_numpy(image.copy()).permute(2, 0, 1),
            "masks": torch.from_numpy(masks),
            "text": torch.from_numpy(self.embeddings.lookup(sent_ids)),
            "ref_id": torch.from_numpy(self.cache.ref_id[refs]),
            "sent_id": torch.from_numpy(sent_ids),
            "image_row": torch.tensor(group.image_row),
        }


def _pad(arrays: list[np.ndarray], length: int, fill: float) -> torch.Tensor:
    """Stack arrays of shape (R_i, ...) into (B, length, ...), filling the missing rows."""
    out = np.full((len(arrays), length, *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    for row, array in enumerate(arrays):
        out[row, : len(array)] = array
    return torch.from_numpy(out)


def collate_sequences(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack sequences, padding referents to the longest; ``valid`` marks the real ones.

    Images are stacked in HWC order and returned as a (B, 3, H, W) view: the channels_last
    layout the GPU path wants. Stacking goes through numpy, whose copies of uint8 arrays are
    many times faster here than ``torch.stack`` of permuted views.
    """
    lengths = torch.tensor([len(item["sent_id"]) for item in items])
    longest = int(lengths.max())
    images = np.stack([item["image"].permute(1, 2, 0).numpy() for item in items])
    batch = {
        "image": torch.from_numpy(images).permute(0, 3, 1, 2),
        "image_row": torch.stack([item["image_row"] for item in items]),
        "valid": torch.arange(longest)[None, :] < lengths[:, None],
    }
    for key, fill in (("masks", 0), ("text", 0.0), ("ref_id", -1), ("sent_id", -1)):
        batch[key] = _pad([item[key].numpy() for item in items], longest, fill)
    return batch


def _check_image_folder(refer: Refer, split: str) -> None:
    """Refuse an image folder that holds none of the split's images (the wrong folder)."""
    names = [refer.images[i]["file_name"] for i in refer.refs_by_image(split) if i in refer.images]
    folder = refer.image_dir
    if names and folder.is_dir() and not any((folder / name).is_file() for name in names):
        raise UserError(
            f"image folder {folder} holds none of the {len(names)} images of split {split!r} "
            f"(e.g. {names[0]}): give the folder that holds them as --images (the dataset's "
            "`images` in config.yaml)"
        )


def _prepare_command(args: argparse.Namespace) -> None:
    if args.images and not Path(args.images).is_dir():  # checked before anything is read
        state = "is not a folder" if Path(args.images).exists() else "does not exist"
        raise UserError(
            f"--images {args.images} {state}: give the folder that holds the dataset's images "
            "(the dataset's `images` in config.yaml)"
        )
    refer = refer_from_args(args)
    _check_image_folder(refer, args.split)
    counts = write_cache(refer, args.split, args.out, args.height, args.width)
    log.info("wrote %s: %s", args.out, counts)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis prepare``."""
    parser = add_command(subparsers, "prepare")
    add_refer_arguments(parser)
    parser.add_argument("--split", required=True, help="split name, exactly as in the refs file")
    parser.add_argument(
        "--height", type=positive_int, default=240, help="cached image height (default %(default)s)"
    )
    parser.add_argument(
        "--width", type=positive_int, default=427, help="cached image width (default %(default)s)"
    )
    parser.add_argument("--out", type=output_file, required=True, help="output .h5 file")
    parser.set_defaults(func=_prepare_command)
