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
from rsis.fields import check_fields, holds

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


def _decode_text(value: bytes) -> str:
    """A Python 2 byte string as str: UTF-8, else Latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _decode_leaf(value: object) -> object:
    """A byte string as str; a tuple with its byte strings decoded; anything else as is."""
    if isinstance(value, bytes):
        return _decode_text(value)
    if isinstance(value, tuple):
        return tuple(_decode_text(v) if isinstance(v, bytes) else v for v in value)
    return value


def _decode_bytes(root: object) -> object:
    """Turn the Python 2 byte strings of a refs pickle (official files) into str, in place.

    The walk is iterative (a deeply nested file cannot exhaust the stack) and visits every
    list and dict once: a pickle whose lists share references (``[n, n]`` nested 40 deep, a
    few KB) stays a small graph instead of being copied into 2**40 nodes. Lists and dicts
    are updated where they are; tuples (immutable) are rebuilt one level deep.
    """
    root = _decode_leaf(root)
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack:
        container = stack.pop()
        if id(container) in seen:
            continue
        seen.add(id(container))
        if isinstance(container, list):
            container[:] = [_decode_leaf(v) for v in container]
            children = container
        elif isinstance(container, dict):
            items = [(_decode_leaf(k), _decode_leaf(v)) for k, v in container.items()]
            container.clear()
            container.update(items)
            children = container.values()
        else:
            children = container if isinstance(container, tuple) else ()
        stack.extend(v for v in children if isinstance(v, list | dict | tuple))
    return root


def load_refs_pickle(path: Path) -> list[dict]:
    """Load a refs pickle (Python 2 or 3) safely and return its refs with str strings.

    Args:
        path: the ``refs(<splitBy>).p`` file.
    """
    data = path.read_bytes()
    if not data:
        raise UserError(f"{path} is empty: download the refs file again (README, step 1)")
    try:
        refs = _BuiltinsOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise UserError(f"{path}: not a plain refs pickle ({error})") from error
    except Exception as error:  # truncated or not a pickle: EOFError, ValueError, ...
        raise UserError(
            f"{path} is not a readable pickle ({type(error).__name__}: {error}); "
            "download the refs file again (README, step 1)"
        ) from error
    refs = _decode_bytes(refs)
    if not isinstance(refs, list):
        raise UserError(f"{path}: expected a list of ref dicts, got a {type(refs).__name__}")
    odd = next((r for r in refs if not isinstance(r, dict)), None)
    if odd is not None:
        raise UserError(
            f"{path}: expected a list of ref dicts, found a {type(odd).__name__} in the list; "
            "download the refs file again (README, step 1)"
        )
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

    def segmentation_problem(self, ann_id: int) -> str | None:
        """Why an annotation's segmentation cannot be decoded, or None when it can.

        Degenerate segmentations (an empty polygon list, a polygon of fewer than 3 points or
        an odd number of coordinates, an RLE whose size is not the image's) are skipped by
        ``prepare`` and counted, like zero-area masks.
        """
        ann = self.annotations[ann_id]
        image_id = ann.get("image_id")
        image = self.images.get(image_id) if holds(image_id, int) else None
        if image is None:
            return f"image_id {image_id!r} is not in instances.json"
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, list):
            if not segmentation:
                return "empty segmentation list"
            for polygon in segmentation:
                if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                    size = len(polygon) if isinstance(polygon, list) else 0
                    return f"polygon of {size} coordinates (needs an even number, at least 6)"
            return None
        if isinstance(segmentation, dict) and "counts" in segmentation:
            size = list(segmentation.get("size", []))
            if size != [image["height"], image["width"]]:
                return (
                    f"RLE of size {size}, but its image is {image['height']}x{image['width']} "
                    "in instances.json"
                )
            return rle_counts_problem(segmentation, image["height"], image["width"])
        return f"segmentation of type {type(segmentation).__name__}, expected polygons or RLE"

    def decode_mask(self, ann_id: int) -> np.ndarray:
        """Decode an annotation to an (H, W) uint8 0/1 mask at the image's original size.

        Polygons, uncompressed and compressed RLE are all handled by pycocotools; the parts of
        a multi-polygon object are united with ``> 0`` (overlapping parts stay foreground).
        """
        problem = self.segmentation_problem(ann_id)
        if problem:
            raise UserError(f"ann_id {ann_id}: {problem}; it cannot be decoded to a mask")
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


def rle_counts_problem(segmentation: dict, height: int, width: int) -> str | None:
    """Why an uncompressed RLE's ``counts`` cannot describe a ``height`` x ``width`` mask (a
    count that is not a non-negative integer, or counts that do not add up to its pixels), or
    None when they can; a compressed RLE's string is not checked here."""
    counts = segmentation.get("counts")
    if not isinstance(counts, list):
        return None
    odd = next((c for c in counts if not holds(c, int) or c < 0), None)
    if odd is not None:
        return f"uncompressed RLE count {odd!r} is not a non-negative integer"
    if sum(counts) != height * width:
        return (
            f"uncompressed RLE counts add up to {sum(counts)} pixels, not {height}x{width} = "
            f"{height * width}"
        )
    return None


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Decode COCO polygons, uncompressed or compressed RLE to an (H, W) uint8 0/1 mask.

    Polygons and uncompressed RLE are read at (height, width), the image size; uncompressed
    counts that cannot describe such a mask (``rle_counts_problem``) are a ValueError.
    """
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):
        problem = rle_counts_problem(segmentation, height, width)
        if problem:
            raise ValueError(problem)
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return (mask_utils.decode(rle) > 0).astype(np.uint8)


# The flag of ``add_refer_arguments`` behind each dataset key of config.yaml.
FLAGS = {"root": "--refs-root", "name": "--dataset", "splitBy": "--split-by", "images": "--images"}


def _require(path: Path, what: str, key: str) -> Path:
    """``path``, or a ``UserError`` naming the flag and the config key that lead to it."""
    if not path.exists():
        raise UserError(
            f"{what} not found: {path}: give the right {FLAGS[key]} (in the workflow: the "
            f"dataset's `{key}` in config.yaml)"
        )
    return path


REF_FIELDS = {
    "ref_id": int,
    "ann_id": int,
    "image_id": int,
    "category_id": int,
    "split": str,
    "sentences": list,
}
SENTENCE_FIELDS = {"sent_id": int, "sent": str}


def _check_ref(ref: dict, number: int, source: Path) -> None:
    """Refuse a ref that lacks a field or holds a value of the wrong type, naming both."""
    where = f"{source}, ref {ref.get('ref_id', f'#{number}')!r}"
    damaged = "the refs file is damaged or not in the refer format: download it again"
    check_fields(ref, REF_FIELDS, where, damaged)
    for index, sentence in enumerate(ref["sentences"]):
        label = f"sentences[{index}]"
        if not isinstance(sentence, dict):
            raise UserError(f"{where}: {label} is {sentence!r:.40}, not an object; {damaged}")
        check_fields(sentence, SENTENCE_FIELDS, where, damaged, f"{label}.")


def _clean_refs(
    refs: list[dict], annotations: dict[int, dict], source: Path
) -> tuple[list[dict], dict[str, int]]:
    """Drop refs with an unknown ann_id and empty sentences; count every skip.

    A ref whose ann_id is missing from instances.json cannot be scored, and an empty sentence
    cannot be embedded meaningfully; both are skipped, counted and logged, never silently.
    """
    skipped = {"unknown_ann_id": 0, "empty_sentence": 0, "no_sentence": 0}
    kept = []
    for number, ref in enumerate(refs):
        _check_ref(ref, number, source)
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


# The sections of instances.json and the fields every entry of each needs (the annotations'
# image_id and segmentation are checked per referent: ``Refer.segmentation_problem``).
INSTANCE_FIELDS: dict[str, dict[str, type]] = {
    "images": {"id": int, "height": int, "width": int, "file_name": str},
    "annotations": {"id": int},
    "categories": {"id": int, "name": str},
}


def _instance_section(instances: dict, key: str, source: Path) -> list[dict]:
    """The entries of one COCO section of ``instances.json``, every one checked to hold the
    fields of ``INSTANCE_FIELDS``; a missing or malformed one names section, entry and field."""
    damaged = (
        "the instances file is damaged or not COCO: download it again (README, step 1), or "
        "for the generated demo run rsis demo again"
    )
    if key not in instances:
        raise UserError(f"{source}: missing the COCO field {key!r}; {damaged}")
    entries = instances[key]
    if not isinstance(entries, list):
        raise UserError(
            f"{source}: {key!r} is a {type(entries).__name__}, expected a list; {damaged}"
        )
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UserError(f"{source}: {key}[{index}] is {entry!r:.40}, not an object; {damaged}")
        check_fields(entry, INSTANCE_FIELDS[key], str(source), damaged, f"{key}[{index}].")
    return entries


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

    try:
        instances = json.loads(instances_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{instances_path} is not valid JSON ({error}); download it again (README, step 1)"
        ) from error
    if not isinstance(instances, dict):
        raise UserError(f"{instances_path}: expected a COCO object, got a JSON array or value")
    images, annotations, categories = (
        {entry["id"]: entry for entry in _instance_section(instances, key, instances_path)}
        for key in ("images", "annotations", "categories")
    )
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
        images=images,
        annotations=annotations,
        categories={category_id: c["name"] for category_id, c in categories.items()},
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
