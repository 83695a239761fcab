"""Reader for the RefCOCO family in the `refer` layout.

``<root>/<dataset>/refs(<splitBy>).p`` (a list of ref dicts, Python 2 or 3 pickle) plus
``<root>/<dataset>/instances.json`` (COCO format) plus the images in ``image_dir``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from rsis.errors import UserError

log = logging.getLogger(__name__)

SPLITS_BY_SPLITBY: dict[str, tuple[str, ...]] = {
    "unc": ("train", "val", "testA", "testB"),
    "umd": ("train", "val", "test"),
    "google": ("train", "val"),
}


class _BuiltinsOnlyUnpickler(pickle.Unpickler):
    """Unpickler that admits only builtin containers and scalars.

    Refs files are lists of dicts of str/int/float/list; any global reference would let the file
    construct arbitrary objects, so every ``find_class`` call is refused.
    """

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a refs file may hold only lists, dicts, "
            "strings and numbers"
        )


def _decode_bytes(value: object) -> object:
    """Turn Python 2 byte strings (official refs files) into str: UTF-8, else Latin-1."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, dict):
        return {_decode_bytes(k): _decode_bytes(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_decode_bytes(v) for v in value)
    return value


def load_refs_pickle(path: Path) -> list[dict]:
    """Load a refs pickle (Python 2 or 3) safely and return its refs with str strings.

    Args:
        path: the ``refs(<splitBy>).p`` file.
    """
    data = path.read_bytes()
    try:
        refs = _BuiltinsOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise UserError(f"{path}: not a plain refs pickle ({error})") from error
    refs = _decode_bytes(refs)
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise UserError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}")
    return refs


@dataclass
class Refer:
    """A referring-expression dataset in the `refer` layout, loaded into memory."""

    root: Path
    dataset: str
    split_by: str
    image_dir: Path
    refs: list[dict]
    images: dict[int, dict]
    annotations: dict[int, dict]
    categories: dict[int, str]
    skipped: dict[str, int] = field(default_factory=dict)

    def splits(self) -> list[str]:
        """Splits present in the refs file, in the order they first appear."""
        return list(OrderedDict.fromkeys(r["split"] for r in self.refs))

    def refs_in_split(self, split: str) -> list[dict]:
        """Refs whose split is exactly ``split``, in dataset order."""
        if split not in self.splits():
            raise UserError(
                f"split {split!r} is not in {self.dataset} ({self.split_by}); "
                f"it has {', '.join(self.splits())}"
            )
        return [r for r in self.refs if r["split"] == split]

    def sentences(self) -> list[tuple[int, str, str]]:
        """Every (sent_id, split, text) of the dataset, ref after ref."""
        return [(s["sent_id"], r["split"], s["sent"]) for r in self.refs for s in r["sentences"]]

    def image_path(self, image_id: int) -> Path:
        """Path of an image file; a missing image folder names the config key to set."""
        _require(self.image_dir, "image folder", "images")
        return self.image_dir / self.images[image_id]["file_name"]

    def decode_mask(self, ann_id: int) -> np.ndarray:
        """Decode an annotation to an (H, W) uint8 0/1 mask at the image's original size.

        Polygons, uncompressed and compressed RLE are all handled by pycocotools; the parts of
        a multi-polygon object are united with ``> 0`` (overlapping parts stay foreground).
        """
        ann = self.annotations[ann_id]
        image = self.images[ann["image_id"]]
        return decode_segmentation(ann["segmentation"], image["height"], image["width"])

    def refs_by_image(self, split: str) -> dict[int, list[dict]]:
        """Refs of a split grouped per image id: images in the order their first ref appears,
        each image's refs in dataset order."""
        per_image: dict[int, list[dict]] = {}
        for ref in self.refs_in_split(split):
            per_image.setdefault(ref["image_id"], []).append(ref)
        return per_image

    def sequences(self, split: str, max_referents: int = 6) -> list[list[dict]]:
        """Refs of a split grouped per image (dataset order), chunked to ``max_referents``."""
        if max_referents < 1:
            raise UserError(f"max_referents must be at least 1, got {max_referents}")
        return [
            refs[i : i + max_referents]
            for refs in self.refs_by_image(split).values()
            for i in range(0, len(refs), max_referents)
        ]


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Decode COCO polygons, uncompressed or compressed RLE to an (H, W) uint8 0/1 mask.

    Polygons and uncompressed RLE are read at (height, width), the image size.
    """
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return (mask_utils.decode(rle) > 0).astype(np.uint8)


def _require(path: Path, what: str, key: str) -> Path:
    if not path.exists():
        raise UserError(f"{what} not found: {path}. Set `{key}` in config.yaml to the right path.")
    return path


def _clean_refs(
    refs: list[dict], annotations: dict[int, dict], source: Path
) -> tuple[list[dict], dict[str, int]]:
    """Drop refs with an unknown ann_id and empty sentences; count every skip.

    A ref whose ann_id is missing from instances.json cannot be scored, and an empty sentence
    cannot be embedded meaningfully; both are skipped, counted and logged, never silently.
    """
    skipped = {"unknown_ann_id": 0, "empty_sentence": 0, "no_sentence": 0}
    kept = []
    for ref in refs:
        if ref["ann_id"] not in annotations:
            skipped["unknown_ann_id"] += 1
            continue
        sentences = [s for s in ref["sentences"] if s["sent"].strip()]
        skipped["empty_sentence"] += len(ref["sentences"]) - len(sentences)
        if not sentences:
            skipped["no_sentence"] += 1
            continue
        kept.append({**ref, "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences]})
    for reason, count in skipped.items():
        if count:
            log.warning("%s: skipped %d (%s)", source, count, reason.replace("_", " "))
    return kept, skipped


def load_refer(
    root: str | Path, dataset: str, split_by: str, image_dir: str | Path | None = None
) -> Refer:
    """Load ``<root>/<dataset>/refs(<split_by>).p`` and ``instances.json``.

    Args:
        root: folder that holds ``<dataset>/`` (config key ``root``).
        dataset: dataset folder name, e.g. ``refcoco`` (config key ``name``).
        split_by: ``unc``, ``umd`` or ``google`` (config key ``splitBy``).
        image_dir: folder of the images; default ``<root>/images/mscoco/images/train2014``
            (checked when an image is first needed, so text-only steps run without images).
    """
    root = _require(Path(root), "dataset root", "root")
    folder = _require(root / dataset, "dataset folder", "name")
    refs_path = _require(folder / f"refs({split_by}).p", "refs file", "splitBy")
    instances_path = _require(folder / "instances.json", "instances file", "root")
    image_dir = Path(image_dir) if image_dir else root / "images/mscoco/images/train2014"

    instances = json.loads(instances_path.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in instances:
            raise UserError(f"{instances_path}: missing the COCO field {key!r}")
    annotations = {a["id"]: a for a in instances["annotations"]}
    refs, skipped = _clean_refs(load_refs_pickle(refs_path), annotations, refs_path)
    allowed = SPLITS_BY_SPLITBY.get(split_by)
    unknown = sorted({r["split"] for r in refs} - set(allowed or ()))
    if allowed and unknown:
        raise UserError(
            f"{refs_path}: splits {unknown} are not {split_by} splits ({', '.join(allowed)})"
        )
    return Refer(
        root=root,
        dataset=dataset,
        split_by=split_by,
        image_dir=image_dir,
        refs=refs,
        images={i["id"]: i for i in instances["images"]},
        annotations=annotations,
        categories={c["id"]: c["name"] for c in instances["categories"]},
        skipped=skipped,
    )


def add_refer_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Add ``--refs-root``, ``--dataset``, ``--split-by`` and ``--images`` to a subcommand."""
    parser.add_argument("--refs-root", required=required, help="folder holding <dataset>/")
    parser.add_argument("--dataset", required=required, help="dataset folder, e.g. refcoco")
    parser.add_argument("--split-by", default="unc", help="unc, umd or google")
    parser.add_argument("--images", help="image folder (default: refer layout under the root)")


def refer_from_args(args: argparse.Namespace) -> Refer:
    """``load_refer`` with the arguments of ``add_refer_arguments``."""
    return load_refer(args.refs_root, args.dataset, args.split_by, args.images)
