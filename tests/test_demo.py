"""The generated demo dataset: layout, determinism, expressions, masks, splits, CLI."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from rsis.cli import main
from rsis.data.demo import polygons, scale, scenes, writer
from rsis.data.refer import load_refer
from rsis.errors import UserError

HEIGHT, WIDTH = 96, 171
COUNTS = {"train": 4, "val": 2, "testA": 3, "testB": 3}
PLAN = scale.small_plan(COUNTS, HEIGHT, WIDTH)


def _generate(out: Path, seed: int = 0) -> Path:
    writer.generate_demo(out, seed=seed, plan=PLAN)
    return out


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("demo") / "demo_root")


@pytest.fixture(scope="module")
def files(dataset):
    refs = pickle.loads((dataset / "demo" / "refs(unc).p").read_bytes())
    instances = json.loads((dataset / "demo" / "instances.json").read_text())
    return refs, instances


def _decode(ann: dict, image: dict) -> np.ndarray:
    rles = mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
    return mask_utils.decode(mask_utils.merge(rles))


def test_refer_layout_fields(dataset, files):
    refs, instances = files
    assert (dataset / "demo" / "refs(unc).p").read_bytes()[:2] == b"\x80\x02"  # protocol 2
    assert set(refs[0]) == {
        "ref_id", "ann_id", "image_id", "split", "category_id", "sent_ids", "sentences",
        "file_name",
    }  # fmt: skip
    assert set(refs[0]["sentences"][0]) == {"sent_id", "sent", "raw", "tokens"}
    assert {c["name"] for c in instances["categories"]} == set(scenes.SHAPES)
    anns = {a["id"]: a for a in instances["annotations"]}
    assert sorted(r["ann_id"] for r in refs) == sorted(anns)  # one ref per annotation
    for ref in refs:
        assert anns[ref["ann_id"]]["image_id"] == ref["image_id"]
        assert anns[ref["ann_id"]]["category_id"] == ref["category_id"]
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        assert 2 <= len(ref["sentences"]) <= 3
    for ann in instances["annotations"]:
        assert ann["iscrowd"] == 0
        assert all(isinstance(p, list) and len(p) >= 8 for p in ann["segmentation"])
    for image in instances["images"]:
        with Image.open(dataset / "images" / image["file_name"]) as picture:
            assert picture.format == "JPEG"
            assert picture.size == (image["width"], image["height"]) == (WIDTH, HEIGHT)


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    again = _hashes(_generate(tmp_path / "again", seed=0))
    assert again == _hashes(dataset)
    writer.generate_demo(tmp_path / "workers", seed=0, plan=PLAN, workers=2)
    assert _hashes(tmp_path / "workers") == again
    other = _hashes(_generate(tmp_path / "other", seed=1))
    assert other.keys() == again.keys()
    assert other["demo/refs(unc).p"] != again["demo/refs(unc).p"]
    assert all(other[k] != again[k] for k in again if k.startswith("images/"))


# --- an independent reading of the expression templates, on the stored annotations ----------

RELATIONS = {"left of": ("x", -1), "right of": ("x", 1), "above": ("y", -1), "below": ("y", 1)}
EXTREMES = {
    "leftmost": ("x", -1),
    "rightmost": ("x", 1),
    "topmost": ("y", -1),
    "bottommost": ("y", 1),
}


def _objects(instances: dict, image_id: int) -> dict[int, dict]:
    names = {c["id"]: c["name"] for c in instances["categories"]}
    return {
        a["id"]: {
            "shape": names[a["category_id"]],
            **a["attributes"],
            "x": a["bbox"][0] + a["bbox"][2] / 2,
            "y": a["bbox"][1] + a["bbox"][3] / 2,
        }
        for a in instances["annotations"]
        if a["image_id"] == image_id
    }


def _noun_phrase(words: list[str], objects: dict[int, dict]) -> set[int]:
    """Objects matching e.g. ['big', 'red', 'shape']: the last word is a shape or 'shape'."""
    *adjectives, noun = words
    assert all(w in ("small", "big") or w in scenes.COLOURS for w in adjectives), words
    found = set(objects)
    for word in adjectives:
        key = "size" if word in ("small", "big") else "colour"
        found = {i for i in found if objects[i][key] == word}
    if noun != "shape":
        found = {i for i in found if objects[i]["shape"] == noun}
    return found


def _resolve(sentence: str, objects: dict[int, dict]) -> set[int]:
    """The annotation ids a sentence denotes in its image."""
    for relation, (axis, sign) in RELATIONS.items():
        if f" {relation} the " in sentence:
            target, landmark = sentence.split(f" {relation} the ")
            (anchor,) = _noun_phrase(landmark.split(), objects)
            return {
                i
                for i in _noun_phrase(target.removeprefix("the ").split(), objects)
                if sign * (objects[i][axis] - objects[anchor][axis]) > 0
            }
    first, *rest = sentence.removeprefix("the ").split()
    if first in EXTREMES:
        axis, sign = EXTREMES[first]
        group = _noun_phrase(rest, objects)
        best = max(sign * objects[i][axis] for i in group)
        return {i for i in group if sign * objects[i][axis] == best}
    return _noun_phrase([first, *rest], objects)


def test_every_expression_unique_and_resolves_to_its_referent(files):
    refs, instances = files
    per_image: dict[int, list[str]] = {}
    kinds = Counter()
    for ref in refs:
        objects = _objects(instances, ref["image_id"])
        for sentence in ref["sentences"]:
            assert _resolve(sentence["sent"], objects) == {ref["ann_id"]}, sentence["sent"]
            assert sentence["tokens"] == sentence["sent"].split()
            kinds["relation" if " the " in sentence["sent"] else sentence["sent"].split()[1]] += 1
            per_image.setdefault(ref["image_id"], []).append(sentence["sent"])
    for sentences in per_image.values():
        assert len(sentences) == len(set(sentences))
    assert kinds["relation"] > 0 and any(kinds[word] for word in EXTREMES)


def test_resolver_rejects_ambiguous_expressions():
    objects = {
        1: {"shape": "circle", "colour": "red", "size": "big", "x": 10.0, "y": 50.0},
        2: {"shape": "circle", "colour": "blue", "size": "big", "x": 90.0, "y": 50.0},
        3: {"shape": "star", "colour": "red", "size": "small", "x": 50.0, "y": 50.0},
    }
    assert _resolve("the big circle", objects) == {1, 2}
    assert _resolve("the leftmost circle", objects) == {1}
    assert _resolve("circle right of the star", objects) == {2}
    assert _resolve("red shape left of the blue shape", objects) == {1, 3}


def test_masks_decode_visible_disjoint_and_coloured(dataset, files):
    _, instances = files
    images = {i["id"]: i for i in instances["images"]}
    by_image: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    palette = np.array(list(scenes.COLOURS.values()), dtype=np.float64)
    for image_id, anns in by_image.items():
        image = images[image_id]
        picture = np.asarray(Image.open(dataset / "images" / image["file_name"]), np.float64)
        masks = np.stack([_decode(a, image) for a in anns])
        assert masks.shape[1:] == (HEIGHT, WIDTH)
        assert masks.sum(axis=0).max() == 1  # visible parts never overlap
        for ann, mask in zip(anns, masks, strict=True):
            assert mask.sum() == ann["area"] > 0
            rle = mask_utils.encode(np.asfortranarray(mask))
            np.testing.assert_allclose(mask_utils.toBbox(rle), ann["bbox"])
            assert 0.1 * HEIGHT <= ann["bbox"][3] <= 0.35 * HEIGHT + 1
            mean = picture[mask.astype(bool)].mean(axis=0)
            nearest = list(scenes.COLOURS)[np.argmin(((palette - mean) ** 2).sum(axis=1))]
            assert nearest == ann["attributes"]["colour"]


def test_polygons_decode_to_exactly_the_visible_pixels():
    scene = scenes.make_scene(np.random.default_rng(3), HEIGHT, WIDTH, crowded=True)
    for index, polygon in enumerate(scene.polygons):
        decoded = mask_utils.decode(
            mask_utils.merge(mask_utils.frPyObjects([polygon], *scene.owner.shape))
        )
        np.testing.assert_array_equal(decoded, scene.owner == index)
    assert (scene.owner >= 0).sum() == sum(polygons.polygon_area(p) for p in scene.polygons)


def test_mask_to_polygons_is_exact_on_random_masks():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(3, 16, size=2))
        mask = (rng.random((height, width)) < 0.5).astype(np.uint8)
        loops = polygons.mask_to_polygons(mask)
        areas = [polygons.polygon_area(loop) for loop in loops]
        assert sum(areas) == mask.sum()  # holes count negative
        if loops and min(areas) > 0:  # no holes: the union of loops is the mask
            rles = mask_utils.frPyObjects(loops, height, width)
            np.testing.assert_array_equal(mask_utils.decode(mask_utils.merge(rles)), mask)
            checked += 1
    assert checked > 50
    ring = np.ones((5, 5), np.uint8)
    ring[2, 2] = 0
    assert sorted(polygons.polygon_area(p) for p in polygons.mask_to_polygons(ring)) == [-1.0, 25.0]


def test_splits_and_crowding(files):
    refs, instances = files
    split_of = {r["image_id"]: r["split"] for r in refs}
    assert Counter(split_of.values()) == COUNTS
    for image_id, split in split_of.items():
        shapes = Counter(
            a["category_id"] for a in instances["annotations"] if a["image_id"] == image_id
        )
        assert 2 <= sum(shapes.values()) <= 6
        if split == "testA":
            assert max(shapes.values()) >= 3
        if split == "testB":
            assert max(shapes.values()) <= 2


EASY = scenes.SceneRules(max_objects=4, colour_reuse=0.0, templates=("attribute",))


def test_scene_rules_limit_objects_colours_and_templates(tmp_path):
    out = tmp_path / "easy"
    writer.generate_demo(out, seed=1, plan=PLAN, rules=EASY)
    refs = pickle.loads((out / "demo" / "refs(unc).p").read_bytes())
    instances = json.loads((out / "demo" / "instances.json").read_text())
    assert instances["info"]["rules"] == {
        "max_objects": 4, "colour_reuse": 0.0, "templates": ["attribute"]
    }  # fmt: skip
    for image in instances["images"]:
        objects = _objects(instances, image["id"])
        colours = [o["colour"] for o in objects.values()]
        assert 2 <= len(objects) <= 4 and len(set(colours)) == len(colours)
    for ref in refs:
        objects = _objects(instances, ref["image_id"])
        for sentence in ref["sentences"]:
            words = sentence["sent"].split()
            assert words[0] == "the" and not set(words) & set(EXTREMES), words
            assert not any(f" {relation} " in sentence["sent"] for relation in RELATIONS)
            assert _resolve(sentence["sent"], objects) == {ref["ann_id"]}
    crowded = [r for r in refs if r["split"] == "testA"]
    assert crowded and all(r["sentences"] for r in crowded)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"max_objects": 3}, "--max-objects must be 4 to 6"),
        ({"colour_reuse": 1.5}, "--colour-reuse must be in [0, 1]"),
        ({"templates": ("colour",)}, "--templates ['colour'] must be a non-empty subset"),
        ({"templates": ()}, "must be a non-empty subset"),
    ],
)
def test_scene_rules_reject_bad_values(rules, message):
    with pytest.raises(UserError, match=re.escape(message)):
        scenes.SceneRules(**rules)


def test_load_refer_reads_the_demo(dataset, files):
    refs, instances = files
    refer = load_refer(dataset, "demo", "unc", dataset / "images")
    assert refer.splits() == list(scale.SPLITS)
    assert len(refer.refs) == len(refs) and not any(refer.skipped.values())
    assert set(refer.categories.values()) == set(scenes.SHAPES)
    images = {i["id"]: i for i in instances["images"]}
    for ann in instances["annotations"][:10]:
        np.testing.assert_array_equal(
            refer.decode_mask(ann["id"]), _decode(ann, images[ann["image_id"]])
        )
    assert all(refer.image_path(i).is_file() for i in refer.images)
    assert sum(len(s) for s in refer.sequences("testA")) == len(refer.refs_in_split("testA"))


def test_failed_run_leaves_previous_output_untouched(dataset, tmp_path, monkeypatch):
    out = _generate(tmp_path / "out")
    before = _hashes(out)
    calls = []
    real = scenes.make_scene

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(scenes, "make_scene", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        writer.generate_demo(out, seed=5, plan=PLAN)
    assert _hashes(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_refuses_to_replace_unrelated_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a demo dataset"):
        _generate(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["demo", "--out", str(out), "--seed", "0", "--train-images", "1", "--val-images", "1"]
    args += ["--testa-images", "1", "--testb-images", "0", "--height", "64", "--width", "96"]
    assert main(args) == 0
    instances = json.loads((out / "demo" / "instances.json").read_text())
    assert [(i["height"], i["width"]) for i in instances["images"]] == [(64, 96)] * 3
    # no --difficulty: config.yaml's default, shapes
    assert instances["info"]["rules"] == {
        "max_objects": 6, "colour_reuse": 0.9, "templates": ["attribute"]
    }  # fmt: skip
    easy = ["--max-objects", "4", "--colour-reuse", "0", "--templates", "attribute"]
    assert main([*args, "--out", str(tmp_path / "easy"), *easy]) == 0
    info = json.loads((tmp_path / "easy" / "demo" / "instances.json").read_text())["info"]
    assert info["rules"]["templates"] == ["attribute"] and info["rules"]["max_objects"] == 4
    assert main([*args, "--out", str(tmp_path / "shapes"), "--difficulty", "shapes"]) == 0
    info = json.loads((tmp_path / "shapes" / "demo" / "instances.json").read_text())["info"]
    assert info["rules"] == {"max_objects": 6, "colour_reuse": 0.9, "templates": ["attribute"]}
    named = ["--difficulty", "colour", "--max-objects", "5"]  # a flag overrides the name
    assert main([*args, "--out", str(tmp_path / "five"), *named]) == 0
    info = json.loads((tmp_path / "five" / "demo" / "instances.json").read_text())["info"]
    assert info["rules"] == {"max_objects": 5, "colour_reuse": 0.0, "templates": ["attribute"]}
    assert main([*args[:-4], "--height", "20"]) == 2
    assert "--height must be at least 48" in capsys.readouterr().err
    assert main([*args[:-6], "--testb-images", "-1"]) == 2
    assert "--testb-images must be 0 or more" in capsys.readouterr().err


def test_expression_kinds_name_their_template():
    kinds = Counter()
    for seed in range(4):
        scene = scenes.make_scene(np.random.default_rng(seed), HEIGHT, WIDTH, crowded=True)
        for said in scene.expressions:
            for expression in said:
                relation = any(f" {r} the " in expression.text for r in RELATIONS)
                extreme = expression.text.split()[1] in EXTREMES
                assert expression.kind == (
                    "relation" if relation else "extreme" if extreme else "attribute"
                ), expression
                kinds[expression.kind] += 1
    assert set(kinds) == {"attribute", "extreme", "relation"}


def test_even_shares_spread_a_total():
    assert scale.even_shares(7, 3) == [2, 2, 3]
    shares = scale.even_shares(42_404, 16_994)
    assert sum(shares) == 42_404 and set(shares) == {2, 3}


def test_refcoco_plan_has_refcocos_counts_and_coco_sizes():
    plan = scale.refcoco_plan()
    totals = {
        split: (
            len(images),
            sum(len(image.expressions) for image in images),
            sum(sum(image.expressions) for image in images),
        )
        for split, images in plan.images.items()
    }
    assert totals == {
        "train": (16_994, 42_404, 120_624),
        "val": (1_500, 3_811, 10_834),
        "testA": (750, 1_975, 5_657),
        "testB": (750, 1_810, 5_095),
    }
    assert [sum(column) for column in zip(*totals.values(), strict=True)] == [
        19_994, 50_000, 142_210
    ]  # fmt: skip
    sizes = Counter((image.height, image.width) for image in plan.images["train"])
    assert sizes.most_common(1)[0][0] == (480, 640) and len(sizes) == 6
    per_referent = {n for image in plan.images["val"] for n in image.expressions}
    assert per_referent == {2, 3}


def test_refcoco_fraction_keeps_the_ratios():
    tenth = scale.refcoco_plan(0.1)
    val = tenth.images["val"]
    assert len(val) == 150 and sum(len(i.expressions) for i in val) == 381
    assert sum(sum(i.expressions) for i in val) == 1_083
    with pytest.raises(UserError, match=r"--fraction must be in \(0, 1\], got 0"):
        scale.refcoco_plan(0)


def test_refcoco_scale_writes_its_plan(tmp_path):
    full = scale.refcoco_plan()
    plan = scale.DemoPlan({s: images[:2] for s, images in full.images.items()}, full.info)
    out = tmp_path / "refcoco"
    writer.generate_demo(out, seed=0, plan=plan, rules=EASY)
    refs = pickle.loads((out / "demo" / "refs(unc).p").read_bytes())
    instances = json.loads((out / "demo" / "instances.json").read_text())
    assert instances["info"]["scale"] == "refcoco"
    planned = [image for split in scale.SPLITS for image in plan.images[split]]
    assert len(instances["images"]) == len(planned) == 8
    for image, wanted in zip(instances["images"], planned, strict=True):
        with Image.open(out / "images" / image["file_name"]) as picture:
            assert (
                picture.size == (image["width"], image["height"]) == (wanted.width, wanted.height)
            )
        objects = _objects(instances, image["id"])
        mine = [ref for ref in refs if ref["image_id"] == image["id"]]
        assert sorted(len(ref["sentences"]) for ref in mine) == sorted(wanted.expressions)
        assert len(objects) >= len(mine)
        for ref in mine:
            for sentence in ref["sentences"]:
                assert _resolve(sentence["sent"], objects) == {ref["ann_id"]}
    assert len(instances["annotations"]) > len(refs)  # some shapes are no referent
    refer = load_refer(out, "demo", "unc", out / "images")
    assert len(refer.refs) == len(refs) and not any(refer.skipped.values())
