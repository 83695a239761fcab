"""Reader of a split cache (``rsis prepare``; layout in docs/architecture.md, "Cache file").

``SplitCache`` is the one place that reads the format: the training dataset, evaluation, the
figures and the loader benchmark all go through it. The index (ids, areas, sentences) is read
once when it opens; images and masks are read on demand through an HDF5 handle opened on first
use, so a ``SplitCache`` can be handed to DataLoader workers before any read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rsis.errors import UserError
from rsis.io import open_hdf5, plain_attrs

CACHE_FORMAT = 2  # 2: masks bit-packed along the width


@dataclass(frozen=True)
class ImageReferents:
    """The referents of one cached image: rows ``start:stop`` of the referent arrays."""

    image_row: int
    start: int
    stop: int


class SplitCache:
    """One split cache, read-only.

    Attributes:
        path: the cache file.
        attrs: its attributes (``split``, ``dataset``, ``split_by``, ``height``, ``width``, ...).
        ref_id, ann_id, category_id, image_index, area: one entry per referent (cache row).
        sent_ids, sent_ptr: referent ``r`` owns ``sent_ids[sent_ptr[r]:sent_ptr[r + 1]]``.
        image_id, image_hw: one entry per image row (``image_hw``: the original (height, width)).
    """

    INDEX = ("ref_id", "ann_id", "category_id", "image_index", "area", "sent_ids", "sent_ptr")

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"split cache not found: {self.path}; run `rsis prepare` first")
        with open_hdf5(self.path, writer="rsis prepare") as f:
            self.attrs = plain_attrs(f.attrs)
            if "format_version" not in self.attrs or "masks" not in f:
                raise UserError(
                    f"{self.path} is not a split cache (it holds "
                    f"{', '.join(sorted(f)) or 'nothing'}): give the file `rsis prepare` "
                    "writes, results/<dataset>/cache/<split>.h5"
                )
            if self.attrs.get("format_version") != CACHE_FORMAT:
                raise UserError(
                    f"{self.path} is a cache of format {self.attrs.get('format_version')}, this "
                    f"rsis reads format {CACHE_FORMAT}: delete it and rerun `rsis prepare` "
                    "(or snakemake)"
                )
            index = {key: f[key][:] for key in (*self.INDEX, "image_id", "image_hw")}
        self.ref_id: np.ndarray = index["ref_id"]
        self.ann_id: np.ndarray = index["ann_id"]
        self.category_id: np.ndarray = index["category_id"]
        self.image_index: np.ndarray = index["image_index"]
        self.area: np.ndarray = index["area"]
        self.sent_ids: np.ndarray = index["sent_ids"]
        self.sent_ptr: np.ndarray = index["sent_ptr"]
        self.image_id: np.ndarray = index["image_id"]
        self.image_hw: np.ndarray = index["image_hw"]
        self._file: h5py.File | None = None
        self._pixels: tuple[h5py.Dataset, h5py.Dataset] | None = None  # images, masks

    @property
    def split(self) -> str:
        return str(self.attrs["split"])

    @property
    def dataset(self) -> str:
        return str(self.attrs["dataset"])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the cached images and masks."""
        return int(self.attrs["height"]), int(self.attrs["width"])

    def __len__(self) -> int:
        """Number of referents."""
        return len(self.ref_id)

    def referents_by_image(self) -> list[ImageReferents]:
        """Each image's referents, in cache order (contiguous rows, dataset order)."""
        bounds = np.flatnonzero(np.diff(self.image_index)) + 1
        starts = np.concatenate([[0], bounds]).astype(int)
        stops = np.concatenate([bounds, [len(self.image_index)]]).astype(int)
        return [
            ImageReferents(int(self.image_index[a]), int(a), int(b))
            for a, b in zip(starts, stops, strict=True)
        ]

    def sentences(self, row: int) -> np.ndarray:
        """Sentence ids of the referent in cache row ``row``, first expression first."""
        return self.sent_ids[self.sent_ptr[row] : self.sent_ptr[row + 1]]

    def _datasets(self) -> tuple[h5py.Dataset, h5py.Dataset]:
        """The images and masks datasets, opened on first use and kept (a group lookup costs
        as much as reading an image)."""
        if self._pixels is None:
            self._file = h5py.File(self.path, "r")
            self._pixels = (self._file["images"], self._file["masks"])
        return self._pixels

    def image(self, row: int) -> np.ndarray:
        """Image row ``row`` as (H, W, 3) uint8 RGB.

        Each image (and each mask) is one uncompressed chunk: reading the chunk's bytes
        directly skips h5py's selection machinery (several times faster per call).
        """
        images, _ = self._datasets()
        _, raw = images.id.read_direct_chunk((row, 0, 0, 0))
        return np.frombuffer(raw, np.uint8).reshape(images.shape[1:])

    def masks(self, rows: slice, pick: np.ndarray | None = None) -> np.ndarray:
        """Masks of the referent rows ``rows`` (then ``pick`` among them): (N, H, W) uint8 0/1."""
        _, masks = self._datasets()
        chunks = range(*rows.indices(masks.shape[0]))
        raw = b"".join(masks.id.read_direct_chunk((row, 0, 0))[1] for row in chunks)
        packed = np.frombuffer(raw, np.uint8).reshape(len(chunks), *masks.shape[1:])
        if pick is not None:
            packed = packed[pick]
        return np.unpackbits(packed, axis=-1, count=self.size[1])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._pixels = None

    def __enter__(self) -> SplitCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the HDF5 handle: each DataLoader worker opens its own."""
        return {**self.__dict__, "_file": None, "_pixels": None}
