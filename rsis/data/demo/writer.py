"""Write the demo dataset in the refer layout (atomically), and the ``rsis demo`` command."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from rsis.cli import add_command
from rsis.data import demo
from rsis.data.demo import scenes
from rsis.data.demo.grammar import TEMPLATES, Expression, Thing
from rsis.data.demo.polygons import bbox, polygon_area
from rsis.data.demo.scale import SCALES, SPLITS, DemoPlan, ImagePlan, refcoco_plan, small_plan
from rsis.data.demo.scenes import (
    CATEGORIES,
    DEFAULT_DIFFICULTY,
    DIFFICULTIES,
    FULL_RULES,
    SceneRules,
)
from rsis.errors import UserError
from rsis.progress import progress_bar

log = logging.getLogger(__name__)

JPEG_QUALITY = 90
JSON = {"sort_keys": True, "separators": (",", ":")}


@contextlib.contextmanager
def _atomic_dir(out: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``out``; it replaces ``out`` only when the block succeeds.

    An existing ``out`` must be empty or a previous demo dataset, so a mistyped ``--out`` can
    never delete unrelated files.
    """
    if out.exists() and not (out.is_dir() and _replaceable(out)):
        raise UserError(
            f"--out {out} exists and is not a demo dataset (no demo/refs(unc).p); "
            "choose another folder or remove it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if out.exists():
            old = tmp.with_suffix(".old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _replaceable(out: Path) -> bool:
    return not any(out.iterdir()) or (out / "demo" / "refs(unc).p").is_file()


@dataclass(frozen=True)
class _Object:
    """What the files say about one drawn object."""

    thing: Thing
    polygon: list[int]
    box: list[float]
    expressions: list[Expression]


@dataclass(frozen=True)
class _Drawn:
    """One image drawn and JPEG-encoded: all the writer needs of its scene."""

    jpeg: bytes
    height: int
    width: int
    objects: list[_Object]


def _draw(job: tuple[int, str, int, ImagePlan, SceneRules]) -> _Drawn:
    """Draw image ``i`` of ``split`` from its own generator, seeded by ``(seed, split, i)``."""
    seed, split, i, image, rules = job
    rng = np.random.default_rng([seed, SPLITS.index(split), i])
    crowded = split == "testA" or (split != "testB" and rng.random() < 0.5)
    scene = scenes.make_scene(rng, image.height, image.width, crowded, rules, image.expressions)
    jpeg = io.BytesIO()
    Image.fromarray(scene.image).save(jpeg, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    objects = [
        _Object(thing, scene.polygons[k], bbox(scene.owner == k), scene.expressions[k])
        for k, thing in enumerate(scene.things)
    ]
    return _Drawn(jpeg.getvalue(), image.height, image.width, objects)


def _drawn_images(jobs: list, workers: int) -> Iterator[_Drawn]:
    """``_draw`` over ``jobs`` in order, in ``workers`` processes (0 or 1: this one)."""
    if workers <= 1:
        yield from map(_draw, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_draw, jobs, chunksize=4)


def _annotation(ann_id: int, image_id: int, drawn: _Object) -> dict:
    """The COCO annotation of one object: its visible outline, area, box and attributes."""
    thing = drawn.thing
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORIES[thing.shape],
        "segmentation": [drawn.polygon],
        "area": float(polygon_area(drawn.polygon)),
        "bbox": drawn.box,
        "iscrowd": 0,
        "attributes": {"colour": thing.colour, "size": thing.size},
    }


def _ref(annotation: dict, split: str, ref_id: int, sent_id: int, said: list[Expression]) -> dict:
    """The refer record of one referent; its sentences are numbered from ``sent_id``."""
    sentences = [
        {"sent_id": sent_id + k, "sent": e.text, "raw": e.text, "tokens": e.text.split()}
        for k, e in enumerate(said)
    ]
    image_id, ann_id = annotation["image_id"], annotation["id"]
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "split": split,
        "category_id": annotation["category_id"],
        "sent_ids": [s["sent_id"] for s in sentences],
        "sentences": sentences,
        "file_name": f"demo_{image_id:06d}_{ann_id}.jpg",
    }


class _Records:
    """The growing dataset: image records and refs in memory, annotations streamed to a file.

    Annotations hold the polygons, the bulk of ``instances.json``: they go to ``stream`` as
    sorted-key JSON, so memory stays flat however many images are written.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.images: list[dict] = []
        self.refs: list[dict] = []
        self.annotations = 0
        self.sentences = 0

    def add(self, split: str, image_id: int, file_name: str, drawn: _Drawn) -> None:
        image = {"id": image_id, "file_name": file_name}
        self.images.append(image | {"height": drawn.height, "width": drawn.width})
        for item in drawn.objects:
            self.annotations += 1
            annotation = _annotation(self.annotations, image_id, item)
            self.stream.write(
                ("," if self.annotations > 1 else "") + json.dumps(annotation, **JSON)
            )
            if item.expressions:
                ref = _ref(annotation, split, len(self.refs), self.sentences, item.expressions)
                self.refs.append(ref)
                self.sentences += len(item.expressions)


def _write_instances(folder: Path, annotations: Path, images: list[dict], info: dict) -> None:
    """``instances.json`` as ``json.dumps(..., sort_keys=True)`` writes it, annotations streamed."""
    categories = [
        {"id": i, "name": name, "supercategory": "shape"} for name, i in CATEGORIES.items()
    ]
    with open(folder / "instances.json", "w") as out, open(annotations) as streamed:
        out.write('{"annotations":[')
        shutil.copyfileobj(streamed, out)
        out.write(f'],"categories":{json.dumps(categories, **JSON)}')
        out.write(f',"images":{json.dumps(images, **JSON)},"info":{json.dumps(info, **JSON)}')
        out.write(',"licenses":[]}')


def generate_demo(
    out: str | os.PathLike,
    *,
    seed: int,
    plan: DemoPlan,
    rules: SceneRules = FULL_RULES,
    workers: int = 1,
) -> dict[str, int]:
    """Write the demo dataset to ``out`` (atomically) and return image counts per split.

    Image ``i`` of split ``s`` is drawn from its own generator seeded by ``(seed, s, i)``, so
    the files are byte-identical for one seed, whatever the number of ``workers``, and
    changing one split's count leaves the other splits' pictures as they were (ids are
    numbered across splits in ``SPLITS`` order).

    Args:
        out: dataset root; gets ``demo/refs(unc).p``, ``demo/instances.json``, ``images/``.
        seed: random seed.
        plan: the images of each split (``scale.small_plan`` or ``scale.refcoco_plan``).
        rules: how hard the scenes and expressions are.
        workers: processes drawing images (0 or 1: none besides this one).
    """
    out = Path(out)
    jobs = [(seed, s, i, image, rules) for s in SPLITS for i, image in enumerate(plan.images[s])]
    with _atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        (tmp / "demo").mkdir()
        part = tmp / "demo" / "annotations.part"
        with open(part, "w") as stream:
            records = _Records(stream)
            drawn = progress_bar(_drawn_images(jobs, workers), "demo images", len(jobs), unit="img")
            for image_id, ((_, split, *_), image) in enumerate(zip(jobs, drawn, strict=True), 1):
                file_name = f"demo_{image_id:06d}.jpg"
                (tmp / "images" / file_name).write_bytes(image.jpeg)
                records.add(split, image_id, file_name, image)
        info = {"description": "rsis demo: generated shapes", "seed": seed, **plan.info}
        info["rules"] = dataclasses.asdict(rules)
        _write_instances(tmp / "demo", part, records.images, info)
        part.unlink()
        with open(tmp / "demo" / "refs(unc).p", "wb") as f:
            pickle.dump(records.refs, f, protocol=2)
    log.info(
        "wrote %d images, %d refs, %d sentences to %s",
        len(records.images), len(records.refs), records.sentences, out,
    )  # fmt: skip
    return {split: len(plan.images[split]) for split in SPLITS}


def _demo_command(args: argparse.Namespace) -> None:
    """``rsis demo``: build the plan of the chosen scale and write it."""
    if args.scale == "refcoco":
        plan = refcoco_plan(args.fraction)
    else:
        counts = {
            "train": args.train_images,
            "val": args.val_images,
            "testA": args.testa_images,
            "testB": args.testb_images,
        }
        plan = small_plan(counts, args.height, args.width)
    generate_demo(
        args.out, seed=args.seed, plan=plan, rules=rules_from_args(args), workers=args.workers
    )


def rules_from_args(args: argparse.Namespace) -> SceneRules:
    """The ``SceneRules`` of the arguments ``add_scene_arguments`` added: the named
    difficulty, with any rule given on its own overriding it."""
    given = {"max_objects": args.max_objects, "colour_reuse": args.colour_reuse}
    given["templates"] = tuple(args.templates) if args.templates else None
    overrides = {key: value for key, value in given.items() if value is not None}
    return dataclasses.replace(DIFFICULTIES[args.difficulty], **overrides)


def add_scene_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the picture size and the scene-rule arguments (shared with ``rsis pretrain``)."""
    parser.add_argument("--height", type=int, default=240, help="image height (default 240)")
    parser.add_argument("--width", type=int, default=427, help="image width (default 427)")
    parser.add_argument(
        "--difficulty",
        choices=tuple(DIFFICULTIES),
        default=DEFAULT_DIFFICULTY,
        help="colour: up to 4 shapes of distinct colours, attribute expressions; shapes: up "
        "to 6 shapes, colours repeated, attribute expressions; full: shapes plus spatial and "
        f"relational expressions (default {DEFAULT_DIFFICULTY}, as config.yaml's). The three "
        "flags below override its rules",
    )
    parser.add_argument("--max-objects", type=int, help="most objects per image, 4 to 6")
    parser.add_argument(
        "--colour-reuse",
        type=float,
        help="chance that an object repeats a colour of its image (0 keeps colours unique)",
    )
    parser.add_argument("--templates", nargs="+", choices=TEMPLATES, help="expression kinds")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis demo``: generate the demo dataset in the refer layout."""
    parser = add_command(subparsers, "demo")
    parser.description = demo.__doc__.split("\n\n")[0]
    parser.add_argument("--out", type=Path, default=Path("resources/demo"), help="dataset root")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default="small",
        help="small: the --*-images counts at --height x --width, every shape a referent; "
        "refcoco: RefCOCO's UNC counts (19,994 images, 50,000 referents, 142,210 "
        "expressions) in COCO's image sizes, ignoring those flags (default small)",
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="with --scale refcoco: this share of RefCOCO's counts, for a shorter rehearsal "
        "(default 1)",
    )
    for split, default in (("train", 300), ("val", 40), ("testA", 40), ("testB", 40)):
        parser.add_argument(
            f"--{split.lower()}-images",
            type=int,
            default=default,
            help=f"{split} images (default {default})",
        )
    add_scene_arguments(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes drawing images; the files do not depend on it (default 1)",
    )
    parser.set_defaults(func=_demo_command)
