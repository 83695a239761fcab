"""Bad dataset files end in one clear line (exit code 2) or a counted, logged skip (issue 12).

Every case runs ``rsis prepare`` (or the loader) on a damaged copy of the real RefCOCO sample
and checks the message names the file, field or value, and that no cache is left behind.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import re
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from rsis.cli import main
from rsis.data.refer import load_refs_pickle
from tests.conftest import SAMPLE_ROOT

IMAGES = SAMPLE_ROOT / "images/mscoco/images/train2014"


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of the sample's refs and instances (the images stay shared)."""
    root = tmp_path / "sample"
    shutil.copytree(SAMPLE_ROOT / "refcoco", root / "refcoco")
    return root


def _prepare(root: Path, out: Path, split: str = "val", images: Path = IMAGES) -> int:
    return main(
        ["prepare", "--refs-root", str(root), "--dataset", "refcoco", "--split", split,
         "--images", str(images), "--height", "32", "--width", "48", "--out", str(out)]
    )  # fmt: skip


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


def _nothing_written(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def _edit_instances(root: Path, edit) -> None:
    path = root / "refcoco/instances.json"
    instances = json.loads(path.read_text())
    edit(instances)
    path.write_text(json.dumps(instances))


def _edit_refs(root: Path, edit) -> None:
    path = root / "refcoco/refs(unc).p"
    refs = load_refs_pickle(path)
    edit(refs)
    path.write_bytes(pickle.dumps(refs, protocol=2))


def test_shared_reference_pickle_loads_at_once(sample_copy, tmp_path, capsys):
    """40 levels of ``[n, n]``: 2**40 nodes if copied; a few KB walked once."""
    nested: list = [b"x"]
    for _ in range(40):
        nested = [nested, nested]
    (sample_copy / "refcoco/refs(unc).p").write_bytes(pickle.dumps(nested, protocol=4))
    start = time.perf_counter()
    assert _prepare(sample_copy, tmp_path / "val.h5") == 2
    # generous bound: the walk visits 41 lists; copying them would never finish
    assert time.perf_counter() - start < 60
    error = _error(capsys)
    assert "refs(unc).p: expected a list of ref dicts, found a list" in error


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"refs\(unc\)\.p is empty"),
        # 100,000 nested lists: a recursive walk would raise RecursionError
        (b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".", "expected a list of ref dicts"),
        (b"\x80\x02]K\x01", r"refs\(unc\)\.p is not a readable pickle \(EOFError"),
        (b"plain text, no pickle", r"refs\(unc\)\.p: not a plain refs pickle"),
    ],
    ids=["empty", "deeply-nested", "truncated", "not-a-pickle"],
)
def test_unreadable_refs_pickle_names_the_file(sample_copy, tmp_path, capsys, content, message):
    (sample_copy / "refcoco/refs(unc).p").write_bytes(content)
    out = tmp_path / "val.h5"
    assert _prepare(sample_copy, out) == 2
    error = _error(capsys)
    assert error.startswith("rsis prepare: error:")
    assert re.search(message, error), error
    assert _nothing_written(out)


def test_instances_not_json_names_the_file(sample_copy, tmp_path, capsys):
    (sample_copy / "refcoco/instances.json").write_text('{"images": [')
    assert _prepare(sample_copy, tmp_path / "val.h5") == 2
    assert "instances.json is not valid JSON" in _error(capsys)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda refs: refs[0].pop("sentences"), "field 'sentences' is missing"),
        (
            lambda refs: refs[0]["sentences"][0].update(sent=None),
            "field 'sentences[0].sent' is None, expected a string",
        ),
        (lambda refs: refs[0].update(ann_id="7"), "field 'ann_id' is '7', expected an integer"),
    ],
    ids=["no-sentences", "sent-none", "ann-id-str"],
)
def test_malformed_ref_names_ref_and_field(sample_copy, tmp_path, capsys, edit, message):
    ref_id = load_refs_pickle(sample_copy / "refcoco/refs(unc).p")[0]["ref_id"]
    _edit_refs(sample_copy, edit)
    out = tmp_path / "val.h5"
    assert _prepare(sample_copy, out) == 2
    error = _error(capsys)
    assert f"refs(unc).p, ref {ref_id}" in error and message in error, error
    assert _nothing_written(out)


def test_image_of_another_size_than_instances_is_refused(sample_copy, tmp_path, capsys):
    """A copy rotated by 90 degrees would be squashed while its masks keep the old shape."""
    images = tmp_path / "images"
    shutil.copytree(IMAGES, images)
    refs = load_refs_pickle(sample_copy / "refcoco/refs(unc).p")
    image_id = next(r["image_id"] for r in refs if r["split"] == "val")
    instances = json.loads((sample_copy / "refcoco/instances.json").read_text())
    name = next(i["file_name"] for i in instances["images"] if i["id"] == image_id)
    with Image.open(images / name) as photo:
        photo.transpose(Image.Transpose.ROTATE_90).save(images / name)
    out = tmp_path / "val.h5"
    assert _prepare(sample_copy, out, images=images) == 2
    error = _error(capsys)
    assert f"image {images / name} decodes to" in error and "instances.json gives" in error
    assert _nothing_written(out)


def test_degenerate_segmentations_are_skipped_counted_and_logged(sample_copy, tmp_path, caplog):
    refs = [r for r in load_refs_pickle(sample_copy / "refcoco/refs(unc).p") if r["split"] == "val"]
    broken = {refs[0]["ann_id"]: [[10.0, 10.0, 20.0, 20.0]],  # 2 points
              refs[1]["ann_id"]: [[10.0, 10.0]],  # 1 point
              refs[2]["ann_id"]: [],  # empty
              refs[3]["ann_id"]: {"size": [3, 4], "counts": "0c0"}}  # fmt: skip

    def edit(instances):
        for ann in instances["annotations"]:
            if ann["id"] in broken:
                ann["segmentation"] = broken[ann["id"]]

    _edit_instances(sample_copy, edit)
    out = tmp_path / "val.h5"
    with caplog.at_level(logging.WARNING):
        assert _prepare(sample_copy, out) == 0
    with h5py.File(out) as f:
        kept = set(f["ann_id"][:].tolist())
    assert kept.isdisjoint(broken) and len(kept) == 13 - 4
    for ann_id in broken:
        assert f"skipping ann_id {ann_id}" in caplog.text
    assert "skipped 4 degenerate segmentations" in caplog.text
    assert "RLE of size [3, 4]" in caplog.text and "polygon of 2 coordinates" in caplog.text


def test_split_cache_must_be_an_hdf5_split_cache(demo_pipeline, tmp_path, capsys):
    """Random bytes and a tokens file given as the train cache: neither message says to delete
    the file the user gave (it may be another step's output)."""
    train = ["train", "--run-id", "mean-pca-8-random-bs4", "--epochs", "1",
             "--val-cache", str(demo_pipeline / "cache/val.h5"),
             "--text", str(demo_pipeline / "text/mean~pca~8.h5"), "--weights", "none",
             "--backbone", "resnet18", "--device", "cpu",
             "--out-dir", str(tmp_path / "run")]  # fmt: skip
    junk = tmp_path / "junk.h5"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    assert main([*train, "--train-cache", str(junk)]) == 2
    error = _error(capsys)
    assert f"{junk} is not a readable HDF5 file" in error and "rsis prepare" in error
    tokens = demo_pipeline / "text/tokens.h5"
    assert main([*train, "--train-cache", str(tokens)]) == 2
    error = _error(capsys)
    assert f"{tokens} is not a split cache" in error and "delete" not in error
    assert not (tmp_path / "run/last.pt").exists()


def test_nan_embeddings_are_refused_naming_the_file(demo_pipeline, tmp_path, capsys):
    from rsis.text import EmbeddingTable

    text = tmp_path / "mean~pca~8.h5"
    shutil.copy(demo_pipeline / "text/mean~pca~8.h5", text)
    with h5py.File(text, "r+") as f:
        f["embedding"][3, 1] = np.nan
        bad_id = int(f["sent_id"][3])
    with pytest.raises(Exception, match=rf"{text.name}: 1 embeddings hold NaN .*{bad_id}"):
        EmbeddingTable.load(text)


def _object_nodes(node: object, where: str = "schema"):
    """Every (location, node) of a JSON schema that describes an object."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield where, node
        for key, value in node.items():
            yield from _object_nodes(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _object_nodes(value, f"{where}[{index}]")


SCHEMA = Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"


def test_every_config_level_refuses_unknown_keys():
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())
    open_levels = [
        where for where, node in _object_nodes(schema) if "additionalProperties" not in node
    ]
    assert open_levels == []


def test_config_typo_is_refused_naming_the_key():
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load((SCHEMA.parents[2] / "config.yaml").read_text())
    validate(dict(config), str(SCHEMA))
    config["settings"]["demo"]["epoch"] = 3
    with pytest.raises(Exception, match="'epoch' was unexpected"):
        validate(config, str(SCHEMA))
    del config["settings"]["demo"]["epoch"]
    with pytest.raises(Exception, match="'sed' was unexpected"):
        validate({**config, "sed": 1}, str(SCHEMA))


def test_pca_solution_is_part_of_the_text_identity(demo_pipeline, tmp_path):
    """The same embedding, transform and dim fitted on another split is another pipeline."""
    from rsis.text import EmbeddingTable
    from rsis.text.identity import text_identity

    text = demo_pipeline / "text"
    other = tmp_path / "mean~pca~8.h5"
    assert main(["reduce", "--embeddings", str(text / "embeddings.h5"), "--tokens",
                 str(text / "tokens.h5"), "--embedding", "mean", "--transform", "pca",
                 "--dim", "8", "--fit-split", "val", "--out", str(other)]) == 0  # fmt: skip
    ours = text_identity(EmbeddingTable.load(text / "mean~pca~8.h5"))
    theirs = text_identity(EmbeddingTable.load(other))
    assert {k for k in ours if ours[k] != theirs[k]} == {"pca_hash"}
    assert len(ours["pca_hash"]) == 64
    assert text_identity(EmbeddingTable.load(text / "mean~none~native.h5"))["pca_hash"] == ""


PHOTO = IMAGES / "COCO_train2014_000000000154.jpg"


def _predict(capsys, tmp_path, *args: str) -> str:
    """Run ``rsis predict`` with a bundle path that is never opened: every check here comes
    before the model is loaded. Returns the one error line."""
    assert main(["predict", "--model", str(tmp_path / "never-read.pt"), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_predict_refuses_empty_expression_missing_image_and_out_file(tmp_path, capsys):
    image = ["--image", str(PHOTO)]
    error = _predict(capsys, tmp_path, *image, "--expr", "")
    assert error == f"rsis predict: error: job 1 ({PHOTO}): expression 1 is empty; give some words"
    error = _predict(capsys, tmp_path, *image, "--expr", "zebra", "--expr", "  ")
    assert error == f"rsis predict: error: job 1 ({PHOTO}): expression 2 is empty; give some words"
    missing = tmp_path / "missing.jpg"
    error = _predict(capsys, tmp_path, "--image", str(missing), "--expr", "zebra")
    assert error == f"rsis predict: error: job 1: image {missing} not found"
    taken = tmp_path / "results.txt"
    taken.write_text("keep me")
    error = _predict(capsys, tmp_path, *image, "--expr", "zebra", "--out", str(taken))
    assert f"--out {taken} is a file" in error and taken.read_text() == "keep me"


def test_decompression_bomb_is_refused_naming_the_image(tmp_path, monkeypatch):
    """Pillow refuses images of more than twice MAX_IMAGE_PIXELS (a few KB of PNG can claim
    gigapixels); lowered here so a small picture plays the bomb."""
    from rsis.data.cache import load_resized_image
    from rsis.errors import UserError

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (200, 200)).save(bomb)
    with pytest.raises(UserError, match=rf"cannot decode image {bomb}: Image size \(40000") as got:
        load_resized_image(bomb, 32, 48)
    assert str(got.value).endswith("DOS attack; replace it with a readable JPEG or PNG")


def test_sixteen_bit_grey_keeps_its_picture_and_wider_pixels_are_refused(tmp_path):
    """Pillow's own RGB conversion clips a 16-bit grey PNG at 255 (a ramp turns white)."""
    from rsis.data.cache import open_rgb
    from rsis.errors import UserError

    ramp = np.linspace(0, 65535, 60 * 100).reshape(60, 100).astype(np.uint16)
    sixteen = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(sixteen)
    rgb = np.asarray(open_rgb(sixteen))
    assert rgb.shape == (60, 100, 3)
    np.testing.assert_array_equal(rgb[..., 1], ramp >> 8)
    floats = tmp_path / "depth.tiff"
    Image.fromarray(ramp.astype(np.float32) / 65535).save(floats)
    with pytest.raises(UserError, match=r"depth\.tiff has 32-bit float pixels \(Pillow mode F\)"):
        open_rgb(floats)


def test_prepare_names_a_wrong_image_folder_before_reading(sample_copy, tmp_path, capsys):
    out = tmp_path / "val.h5"
    assert _prepare(sample_copy, out, images=tmp_path / "nodir") == 2
    assert f"--images {tmp_path / 'nodir'} does not exist" in _error(capsys)
    (tmp_path / "empty").mkdir()
    assert _prepare(sample_copy, out, images=tmp_path / "empty") == 2
    assert f"image folder {tmp_path / 'empty'} holds none of the" in _error(capsys)
    assert _nothing_written(out)


def test_an_image_id_that_is_true_or_false_is_no_image(sample_refer):
    """JSON true equals 1 in Python: an annotation whose image_id is true must not be read as
    image 1's."""
    ann_id = sample_refer.refs[0]["ann_id"]
    annotation = sample_refer.annotations[ann_id]
    images = dict(sample_refer.images)
    refer = copy.copy(sample_refer)
    refer.images = images | {1: images[annotation["image_id"]]}
    refer.annotations = {ann_id: {**annotation, "image_id": 1}}
    assert refer.segmentation_problem(ann_id) is None
    refer.annotations = {ann_id: {**annotation, "image_id": True}}
    assert refer.segmentation_problem(ann_id) == "image_id True is not in instances.json"
