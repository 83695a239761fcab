"""``rsis predict`` on a real photo with a bundle trained inside the test."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from rsis.bundle import export_bundle, load_bundle
from rsis.checkpoint import load_trained_model
from rsis.cli import main
from rsis.errors import UserError
from rsis.evaluate import evaluate
from rsis.figures.panels import GAP_PX
from rsis.figures.text import LINE_PX, draw_numbers, label_point
from rsis.predict import (
    NO_PIXELS,
    OVERLAY_MAX_WIDTH,
    OVERLAY_MIN_WIDTH,
    Prediction,
    Predictor,
    empty_masks,
    overlay_legend,
    write_outputs,
)
from rsis.text import EmbeddingTable
from rsis.text.identity import text_identity
from rsis.train import Trainer
from tests.helpers import SAMPLE_ROOT, make_train_config

PHOTO = SAMPLE_ROOT / "images/mscoco/images/train2014/COCO_train2014_000000000154.jpg"


@pytest.fixture(scope="module")
def run_dir(demo_pipeline, tmp_path_factory):
    """One epoch, trained from the data folder with relative paths, as the workflow does."""
    out = tmp_path_factory.mktemp("predict_run")
    here = os.getcwd()
    os.chdir(demo_pipeline)
    try:
        Trainer(make_train_config(Path("."), out, epochs=1, max_referents=3)).run()
    finally:
        os.chdir(here)
    return out


def test_training_writes_a_bundle(run_dir):
    model, bundle = load_bundle(run_dir / "bundle.pt")
    assert bundle["input"]["image_size"] == [48, 80]
    assert bundle["text"]["transform"] == "pca" and bundle["pca"]["components"].shape[0] == 8
    assert not model.training


def test_predict_on_a_real_photo(run_dir, tmp_path):
    expressions = ["man on the left", "red umbrella", "the dog", "a chair", "sky"]
    args = ["predict", "--model", str(run_dir / "bundle.pt"), "--image", str(PHOTO)]
    for expression in expressions:
        args += ["--expr", expression]
    assert main([*args, "--out", str(tmp_path)]) == 0
    with Image.open(PHOTO) as photo:
        size = photo.size
    result = json.loads((tmp_path / f"{PHOTO.stem}.json").read_text())
    assert [m["expression"] for m in result["masks"]] == expressions
    # numbered from 1, as in the legend and the warnings
    assert [m["number"] for m in result["masks"]] == [1, 2, 3, 4, 5]
    assert result["masks"][0]["mask_png"] == f"{PHOTO.stem}_mask01.png"
    assert not any(m["truncated"] for m in result["masks"])
    for record in result["masks"]:
        with Image.open(tmp_path / record["mask_png"]) as mask:
            assert mask.size == size
            assert int((np.asarray(mask) > 0).sum()) == record["area"]
        assert record["rle"]["size"] == [size[1], size[0]]
        # mean probability over pixels whose logit is > 0: above one half, or 0 when empty
        assert 0.5 < record["score"] <= 1 if record["area"] else record["score"] == 0
    with Image.open(tmp_path / result["overlay"]) as overlay:
        assert overlay.size[0] == size[0] + 2 * GAP_PX and overlay.size[1] > size[1]


def test_predict_and_evaluate_give_identical_masks(demo_pipeline, run_dir):
    """Same image, same expressions (first of each referent): the same masks."""
    import h5py

    from rsis.data.refer import load_refer

    cache = demo_pipeline / "cache/val.h5"
    text = EmbeddingTable.load(demo_pipeline / "text/mean~pca~8.h5")
    model, payload = load_trained_model(run_dir / "best.pt", text_identity(text))
    _, _, predictions, _ = evaluate(model, payload, cache, text, expression="first")
    demo = demo_pipeline / "resources/demo"
    refer = load_refer(demo, "demo", "unc", demo / "images")
    with h5py.File(cache) as f:
        image_id = int(f["image_id"][0])
        ref_ids = f["ref_id"][:][f["image_index"][:] == 0].tolist()
    refs = {r["ref_id"]: r for r in refer.refs}
    expressions = [refs[r]["sentences"][0]["sent"] for r in ref_ids]
    got = Predictor(run_dir / "bundle.pt", device="cpu")(refer.image_path(image_id), expressions)
    rows = [predictions.ref_id.tolist().index(r) for r in ref_ids]
    np.testing.assert_array_equal(got.network_masks, predictions.masks(rows))


def _tagged_photo(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """The real photo's pixels saved (lossless) with EXIF orientation 6, "turn 90 degrees
    clockwise to view", as phones store portrait photos; and those stored pixels."""
    with Image.open(PHOTO) as photo:
        stored = np.asarray(photo.convert("RGB"))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    tagged = tmp_path / "portrait.png"
    Image.fromarray(stored).save(tagged, exif=exif.tobytes())
    return tagged, stored


def test_predict_turns_a_photo_upright_as_its_exif_tag_says(run_dir, tmp_path):
    tagged, stored = _tagged_photo(tmp_path)
    upright = np.rot90(stored, -1)  # what a photo viewer shows
    plain = tmp_path / "upright.png"
    Image.fromarray(upright).save(plain)
    expressions = ["the dog", "sky"]
    predictor = Predictor(run_dir / "bundle.pt", device="cpu")
    got = predictor(tagged, expressions)
    assert got.orientation == "exif"
    np.testing.assert_array_equal(got.photo, upright)
    assert got.masks.shape == (2, *upright.shape[:2])
    np.testing.assert_array_equal(got.masks, predictor(plain, expressions).masks)
    as_stored = Predictor(run_dir / "bundle.pt", device="cpu", upright=False)(tagged, expressions)
    np.testing.assert_array_equal(as_stored.photo, stored)
    assert as_stored.masks.shape == (2, *stored.shape[:2])
    result = write_outputs(tagged, got, tmp_path / "out")
    assert result["orientation"] == "exif"
    with Image.open(tmp_path / "out" / result["overlay"]) as overlay:
        assert overlay.size[0] == upright.shape[1] + 2 * GAP_PX


def test_scoring_a_tagged_photo_needs_the_stored_orientation(run_dir, tmp_path, capsys):
    tagged, stored = _tagged_photo(tmp_path)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(tagged), "expressions": ["sky"], "sent_ids": [7]}))
    args = ["predict", "--model", str(run_dir / "bundle.pt"), "--batch", str(jobs)]
    args += ["--score-json", str(tmp_path / "preds.json"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "portrait.png has an EXIF orientation tag" in capsys.readouterr().err
    assert not (tmp_path / "preds.json").exists()
    assert main([*args, "--orientation", "stored"]) == 0
    (sample,) = json.loads((tmp_path / "preds.json").read_text())
    assert sample["segmentation"]["size"] == list(stored.shape[:2])


def test_clear_errors(run_dir, tmp_path):
    predictor = Predictor(run_dir / "bundle.pt", device="cpu")
    with pytest.raises(UserError, match="no expressions"):
        predictor(PHOTO, [])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"cannot decode image .*broken\.jpg") as got:
        predictor(broken, ["the dog"])
    assert str(got.value) == (
        f"cannot decode image {broken}: cannot identify image file {str(broken)!r}; "
        "replace it with a readable JPEG or PNG"
    )
    with pytest.raises(UserError, match="not a model bundle"):
        load_bundle(run_dir / "best.pt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.jpg"}\n')
    args = ["predict", "--model", str(run_dir / "bundle.pt"), "--batch", str(bad)]
    assert main(args) == 2


def test_bad_jobs_and_outputs_are_refused_before_the_model_runs(run_dir, tmp_path, capsys):
    model = ["predict", "--model", str(run_dir / "bundle.pt")]
    empty, one_string = tmp_path / "empty.jsonl", tmp_path / "string.jsonl"
    empty.write_text("\n\n")
    one_string.write_text(json.dumps({"image": str(PHOTO), "expressions": "red"}) + "\n")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    photo = ["--image", str(PHOTO), "--expr", "the dog"]
    cases = [
        ([*model, "--batch", str(empty), "--out", str(tmp_path)], "holds no jobs"),
        (
            [*model, "--batch", str(one_string), "--out", str(tmp_path)],
            "line 1: expected .* \\(expressions must be a list of strings\\)",
        ),
        ([*model, *photo, "--out", str(a_file / "out")], "notes.txt is a file, not a folder"),
        ([*model, *photo, "--out", str(tmp_path), "--device", "gpu0"], "--device 'gpu0': give"),
    ]
    for args, message in cases:
        assert main(args) == 2
        assert re.search(message, capsys.readouterr().err), message
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(PHOTO), "expressions": ["sky"], "sent_ids": [7]}))
    args = [*model, "--batch", str(jobs), "--out", str(tmp_path / "out")]
    assert main([*args, "--score-json", str(tmp_path)]) == 2
    assert "is a folder: give a .json file name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any mask was written


def test_export_refuses_another_text_pipeline(demo_pipeline, run_dir, tmp_path):
    with pytest.raises(UserError, match="not the text pipeline"):
        export_bundle(
            run_dir / "best.pt", demo_pipeline / "text/mean~none~native.h5", tmp_path / "b.pt"
        )


def test_overlay_legend_wraps_a_long_expression_on_a_narrow_photo(tmp_path):
    """A 359-pixel-wide photo and a 20-word expression: the legend wraps, nothing is cut."""
    grey = np.full((300, 359, 3), 90, np.uint8)
    photo = tmp_path / "narrow.png"
    Image.fromarray(grey).save(photo)
    long = " ".join(["the", "small", "red", "circle", "to", "the", "left", "of", "the", "big"] * 2)
    masks = np.zeros((2, 300, 359), bool)
    masks[0, 50:150, 50:150] = masks[1, 200:250, 200:300] = True
    prediction = Prediction(
        grey, "stored", [long, "sky"], masks, masks[:, ::5, ::5], np.ones(2), np.zeros(2, bool)
    )
    result = write_outputs(photo, prediction, tmp_path / "out")
    assert empty_masks(prediction) == []
    masks[1] = False
    assert empty_masks(prediction) == [2]  # warned about by rsis predict
    with Image.open(tmp_path / "out" / result["overlay"]) as png:
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape[:2] == (GAP_PX + 300 + 3 * LINE_PX + GAP_PX, 359 + 2 * GAP_PX)
    legend = pixels[GAP_PX + 300 :]
    text_rows = np.flatnonzero((legend[:, GAP_PX:-GAP_PX] < 200).any(axis=(1, 2)))
    assert text_rows.max() - text_rows.min() > 2 * LINE_PX  # 20 words on 2 lines, then "sky"
    assert (legend[:, -GAP_PX:] == 255).all()  # nothing runs past the photo's width


def test_export_needs_only_the_checkpoint_and_the_text_file(
    demo_pipeline, run_dir, tmp_path, monkeypatch
):
    """The run folder elsewhere, another working directory, the training cache out of reach
    of the relative path the run was trained with: the input size travels in the checkpoint."""
    shutil.copytree(run_dir, tmp_path / "moved")
    shutil.copy(demo_pipeline / "text/mean~pca~8.h5", tmp_path / "text.h5")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert not Path("cache/train.h5").exists()
    command = ["export", "--checkpoint", "../moved/best.pt", "--text", "../text.h5"]
    assert main([*command, "--out", "bundle.pt"]) == 0
    model, bundle = load_bundle(tmp_path / "elsewhere/bundle.pt")
    assert bundle["input"]["image_size"] == [48, 80]
    assert bundle["run"]["dim"] == 8 and bundle["pca"]["components"].shape == (8, 384)
    original, _ = load_bundle(run_dir / "bundle.pt")
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_predict_writes_rsis_score_input(demo_pipeline, run_dir, tmp_path):
    """predict --score-json, scored by rsis score, gives evaluate's original-size numbers."""
    from rsis.data.refer import load_refer

    demo = demo_pipeline / "resources/demo"
    refer = load_refer(demo, "demo", "unc", demo / "images")
    lines = []
    for sequence in refer.sequences("val", max_referents=3):
        first = [ref["sentences"][0] for ref in sequence]
        line = {
            "image": str(refer.image_path(sequence[0]["image_id"])),
            "expressions": [s["sent"] for s in first],
            "sent_ids": [s["sent_id"] for s in first],
        }
        lines.append(json.dumps(line))
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines))
    predict = ["predict", "--model", str(run_dir / "bundle.pt"), "--device", "cpu"]
    jobs = ["--batch", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "out")]
    assert main([*predict, *jobs, "--score-json", str(tmp_path / "preds.json")]) == 0
    refer_args = ["--refs-root", str(demo), "--dataset", "demo", "--images", str(demo / "images")]
    evaluate = [
        "evaluate", "--checkpoint", str(run_dir / "best.pt"),
        "--cache", str(demo_pipeline / "cache/val.h5"),
        "--text", str(demo_pipeline / "text/mean~pca~8.h5"), "--original-size",
        "--out-dir", str(tmp_path / "eval"), *refer_args,
    ]  # fmt: skip
    assert main(evaluate) == 0
    out = tmp_path / "scored.json"
    score = ["score", *refer_args, "--split", "val", "--resolution", "original", "--out", str(out)]
    assert main([*score, "--predictions", str(tmp_path / "preds.json")]) == 0
    scored = json.loads(out.read_text())["metrics"]
    evaluated = json.loads((tmp_path / "eval/val~first.json").read_text())["metrics"]
    assert scored == pytest.approx(evaluated, abs=1e-12)


def test_a_pca_fitted_elsewhere_is_refused(demo_pipeline, run_dir, tmp_path):
    """Same embedding, transform and dim, PCA fitted on the val split: export and evaluate
    refuse it, naming pca_hash."""
    text = demo_pipeline / "text"
    other = tmp_path / "mean~pca~8.h5"
    assert main(["reduce", "--embeddings", str(text / "embeddings.h5"), "--tokens",
                 str(text / "tokens.h5"), "--embedding", "mean", "--transform", "pca",
                 "--dim", "8", "--fit-split", "val", "--out", str(other)]) == 0  # fmt: skip
    with pytest.raises(UserError, match=r"not the text pipeline .*pca_hash: checkpoint has"):
        export_bundle(run_dir / "best.pt", other, tmp_path / "b.pt")
    with pytest.raises(UserError, match="does not match this configuration: pca_hash"):
        load_trained_model(run_dir / "best.pt", text_identity(EmbeddingTable.load(other)))
    assert not (tmp_path / "b.pt").exists()


def test_evaluate_refuses_a_cache_of_another_input_size(demo_pipeline, run_dir, tmp_path, capsys):
    demo = demo_pipeline / "resources/demo"
    small = tmp_path / "val.h5"
    assert main(["prepare", "--refs-root", str(demo), "--dataset", "demo", "--split", "val",
                 "--images", str(demo / "images"), "--height", "32", "--width", "56",
                 "--out", str(small)]) == 0  # fmt: skip
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run_dir / "best.pt"), "--cache", str(small),
                 "--text", str(demo_pipeline / "text/mean~pca~8.h5"), "--device", "cpu",
                 "--out-dir", str(out)]) == 2  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{small} holds 32x56 images but {run_dir / 'best.pt'} was trained at 48x80" in error
    assert not out.exists()


def test_batch_jobs_sharing_a_file_stem_keep_every_output(run_dir, tmp_path):
    """Two photo.jpg in different folders and one image on two lines: every job gets its own
    outputs (photo, photo-2, ...), none overwrites another's, none takes another image's name."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(PHOTO, tmp_path / folder / "photo.jpg")
    shutil.copy(PHOTO, tmp_path / "photo-2.jpg")
    jobs = [(tmp_path / "a/photo.jpg", ["the dog"]), (tmp_path / "b/photo.jpg", ["sky"]),
            (PHOTO, ["a chair"]), (PHOTO, ["red umbrella", "sky"]),
            (tmp_path / "photo-2.jpg", ["man"])]  # fmt: skip
    batch = tmp_path / "jobs.jsonl"
    lines = [json.dumps({"image": str(image), "expressions": expr}) for image, expr in jobs]
    batch.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["predict", "--model", str(run_dir / "bundle.pt"), "--device", "cpu"]
    assert main([*args, "--batch", str(batch), "--out", str(out)]) == 0
    stems = ["photo", "photo-3", PHOTO.stem, f"{PHOTO.stem}-2", "photo-2"]
    for stem, (image, expressions) in zip(stems, jobs, strict=True):
        result = json.loads((out / f"{stem}.json").read_text())
        assert result["image"] == str(image)
        assert [m["expression"] for m in result["masks"]] == expressions
        assert result["overlay"] == f"{stem}_overlay.png" and (out / result["overlay"]).is_file()
        assert all((out / m["mask_png"]).is_file() for m in result["masks"])
    assert len(list(out.glob("*.json"))) == len(jobs)


def _prediction(photo: np.ndarray, masks: np.ndarray) -> Prediction:
    """A prediction of ``masks`` on ``photo`` (expressions "thing 1", "thing 2", ...)."""
    names = [f"thing {k}" for k in range(1, len(masks) + 1)]
    ones, no = np.ones(len(masks)), np.zeros(len(masks), bool)
    return Prediction(photo, "stored", names, masks, masks[:, ::4, ::4], ones, no)


def _overlay(tmp_path: Path, photo: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, dict]:
    """The overlay written for ``masks`` on ``photo`` (RGB pixels), and the JSON."""
    (tmp_path / "in").mkdir(exist_ok=True)
    Image.fromarray(photo).save(tmp_path / "in/photo.png")
    result = write_outputs(tmp_path / "in/photo.png", _prediction(photo, masks), tmp_path / "out")
    with Image.open(tmp_path / "out" / result["overlay"]) as png:
        return np.asarray(png.convert("RGB")), result


def test_a_wide_photo_gets_a_readable_overlay_and_full_size_masks(tmp_path):
    """A 3000x1500 photo: the overlay is exactly 1,600 pixels wide, margins included (its
    15-pixel legend readable), the painted mask lands where it was, and the mask PNG keeps the
    photo's size."""
    photo = np.full((1500, 3000, 3), 90, np.uint8)
    masks = np.zeros((1, 1500, 3000), bool)
    masks[0, 375:1125, 750:2250] = True  # the middle half, in both directions
    overlay, result = _overlay(tmp_path, photo, masks)
    shown = OVERLAY_MAX_WIDTH - 2 * GAP_PX
    assert overlay.shape[:2] == (GAP_PX + shown // 2 + LINE_PX + GAP_PX, OVERLAY_MAX_WIDTH)
    painted = overlay[GAP_PX : GAP_PX + shown // 2, GAP_PX:-GAP_PX]
    assert (painted[shown // 4, shown // 2] != 90).any() and (painted[50, 50] == 90).all()
    with Image.open(tmp_path / "out" / result["masks"][0]["mask_png"]) as mask_png:
        assert mask_png.size == (3000, 1500)


def test_a_small_photo_is_scaled_up_so_its_legend_is_readable(tmp_path):
    """A 64x48 photo: shown 4.75 times larger (nearest neighbour, its pixels kept), so the
    overlay is 320 pixels wide and the legend wraps at that width; the mask PNG stays 64x48."""
    photo = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    masks = np.zeros((1, 48, 64), bool)
    masks[0, 30:40, 40:60] = True
    overlay, result = _overlay(tmp_path, photo, masks)
    shown = OVERLAY_MIN_WIDTH - 2 * GAP_PX  # 304 pixels for 64: a factor of 4.75
    assert overlay.shape[1] == OVERLAY_MIN_WIDTH
    assert overlay.shape[0] == GAP_PX + 228 + LINE_PX + GAP_PX  # 48 * 4.75 = 228
    painted = overlay[GAP_PX : GAP_PX + 228, GAP_PX : GAP_PX + shown]
    np.testing.assert_array_equal(painted[:4, :4], np.broadcast_to(photo[0, 0], (4, 4, 3)))
    with Image.open(tmp_path / "out" / result["masks"][0]["mask_png"]) as mask_png:
        assert mask_png.size == (64, 48)


def test_overlay_numbers_each_mask_and_lists_an_empty_one_as_without_pixels(tmp_path):
    """Referent k's number k is written on its mask, white outlined in black, so masks can be
    told apart where colours repeat (past 10) or clash; an empty mask has no number and its
    legend entry says so."""
    photo = np.full((300, 400, 3), 90, np.uint8)
    masks = np.zeros((3, 300, 400), bool)
    masks[0, 20:120, 20:120] = masks[2, 150:250, 250:350] = True  # mask 2 stays empty
    overlay, _ = _overlay(tmp_path, photo, masks)
    white = (overlay[GAP_PX : GAP_PX + 300, GAP_PX:-GAP_PX] > 230).all(axis=2)  # the digits
    first, third = white[20:120, 20:120], white[150:250, 250:350]
    assert first.sum() > 5 and third.sum() > 5
    assert white.sum() == first.sum() + third.sum()  # numbers only on the masks
    assert not np.array_equal(first, third)  # "1" and "3", not one glyph twice
    entries = [text for text, _ in overlay_legend(_prediction(photo, masks))]
    assert entries == ["1. thing 1", f"2. thing 2 {NO_PIXELS}", "3. thing 3"]


def test_a_number_is_written_inside_a_ring_shaped_mask():
    """A ring's centroid is in its hole; the number goes where the ring is thickest."""
    yy, xx = np.mgrid[:200, :200]
    radius = np.hypot(yy - 100, xx - 100)
    ring = (radius > 50) & (radius < 90)
    x, y = label_point(ring)
    assert ring[y, x] and not ring[100, 100]
    drawn = draw_numbers(np.zeros((200, 200, 3), np.uint8), ring[None])
    white = np.argwhere((drawn > 230).all(axis=2))
    assert len(white) and ring[tuple(white.T)].all()


def test_a_rerun_with_fewer_expressions_leaves_only_its_own_masks(tmp_path):
    """An earlier run's masks beyond this run's expressions are removed, so the folder holds
    what the JSON lists; files that only look alike are left alone."""
    photo = np.full((60, 80, 3), 90, np.uint8)
    masks = np.zeros((3, 60, 80), bool)
    masks[:, 10:20, 10:20] = True
    _overlay(tmp_path, photo, masks)
    out = tmp_path / "out"
    alike = ["photo_mask2.png.bak", "photo-2_mask03.png", "photo_maskx.png", "my_photo_mask03.png"]
    for name in alike:
        (out / name).write_text("keep")
    _, result = _overlay(tmp_path, photo, masks[:1])
    assert [m["mask_png"] for m in result["masks"]] == ["photo_mask01.png"]
    assert sorted(p.name for p in out.glob("photo_mask[0-9]*.png")) == ["photo_mask01.png"]
    assert all((out / name).read_text() == "keep" for name in alike)


def test_a_long_expression_is_cut_with_a_warning_and_marked_in_the_json(run_dir, tmp_path, caplog):
    predictor = Predictor(run_dir / "bundle.pt", device="cpu")
    long = " ".join(["the big red circle to the left of the small blue square"] * 80)
    prediction = predictor(PHOTO, ["the dog", long])
    np.testing.assert_array_equal(prediction.truncated, [False, True])
    kept = f"only its first {predictor.text.limit} tokens"
    assert f"expression 2 is longer than the text model reads: {kept}" in caplog.text
    write_outputs(PHOTO, prediction, tmp_path)
    result = json.loads((tmp_path / f"{PHOTO.stem}.json").read_text())
    assert [m["truncated"] for m in result["masks"]] == [False, True]


def _refused(capsys, tmp_path, *args: str) -> str:
    """Run ``rsis predict`` with a bundle that does not exist, which every check here comes
    before; return its one error line."""
    model = ["predict", "--model", str(tmp_path / "never-read.pt"), "--out", str(tmp_path)]
    assert main([*model, *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0].removeprefix("rsis predict: error: ")


def test_a_batch_file_that_is_missing_or_not_utf8_text_is_one_line(tmp_path, capsys):
    latin = tmp_path / "latin.jsonl"
    line = f'{{"image": "{PHOTO}", "expressions": ["café"]}}'
    latin.write_bytes(line.encode("utf-8") + b"\n" + line.encode("latin-1"))  # é: byte 0xe9
    column = len(line.encode("latin-1").split(b"\xe9")[0]) + 1
    error = _refused(capsys, tmp_path, "--batch", str(latin))
    assert error.startswith(
        f"--batch {latin}, line 2: not UTF-8 text (byte 0xe9 at column {column})"
    )
    error = _refused(capsys, tmp_path, "--batch", str(PHOTO))  # a JPEG given as --batch
    assert error.startswith(f"--batch {PHOTO}, line 1: not UTF-8 text (byte 0xff at column 1)")
    missing = tmp_path / "nothere.jsonl"
    error = _refused(capsys, tmp_path, "--batch", str(missing))
    assert error == f"--batch {missing}: no such file; give a JSONL file, one job per line"


def test_arguments_that_would_be_dropped_are_refused(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(PHOTO), "expressions": ["sky"]}) + "\n")
    error = _refused(capsys, tmp_path, "--image", "a.png", "--image", "b.png", "--expr", "x")
    assert error.startswith("--image given 2 times (a.png, b.png)")
    for extra in (["--image", str(PHOTO), "--expr", "y"], ["--expr", "y"]):
        error = _refused(capsys, tmp_path, "--batch", str(jobs), *extra)
        assert error.startswith("--batch reads images and expressions from its file")


def test_a_sent_id_given_twice_in_a_batch_is_refused_naming_its_lines(tmp_path, capsys):
    def job(*sent_ids: int) -> str:
        return json.dumps({"image": str(PHOTO), "expressions": ["x"] * len(sent_ids),
                           "sent_ids": list(sent_ids)})  # fmt: skip

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([job(1, 2), "", job(2)]) + "\n")
    error = _refused(capsys, tmp_path, "--batch", str(jobs))
    assert error.startswith(f"--batch {jobs}: sent_id 2 is given on line 1 and on line 3;")
    jobs.write_text(job(5, 5) + "\n")
    error = _refused(capsys, tmp_path, "--batch", str(jobs))
    assert error.startswith(f"--batch {jobs}: sent_id 5 is given twice on line 1;")


def test_batch_image_paths_are_relative_to_the_current_folder(tmp_path, capsys, monkeypatch):
    """``photo.jpg`` on a line of ``jobs/jobs.jsonl`` is ``./photo.jpg``, not ``jobs/photo.jpg``:
    found from the folder holding it (then the missing bundle is what stops the run), not from
    the file's folder."""
    (tmp_path / "jobs").mkdir()
    shutil.copy(PHOTO, tmp_path / "jobs/photo.jpg")
    (tmp_path / "jobs/jobs.jsonl").write_text('{"image": "photo.jpg", "expressions": ["sky"]}')
    monkeypatch.chdir(tmp_path)
    assert _refused(capsys, tmp_path, "--batch", "jobs/jobs.jsonl") == (
        "job 1: image photo.jpg not found"
    )
    monkeypatch.chdir(tmp_path / "jobs")
    assert _refused(capsys, tmp_path, "--batch", "jobs.jsonl").startswith(
        f"--model {tmp_path / 'never-read.pt'}: no such file"
    )


def test_a_model_file_that_is_missing_cut_short_or_not_from_rsis_is_one_clear_line(
    tmp_path, capsys
):
    give = "give a bundle.pt written by rsis train or rsis export"
    photo = ["--image", str(PHOTO), "--expr", "sky", "--out", str(tmp_path / "out")]
    whole, cut, plain = tmp_path / "whole.pt", tmp_path / "cut.pt", tmp_path / "plain.pt"
    torch.save({"format_version": 3, "kind": "rsis-model-bundle", "w": torch.zeros(5000)}, whole)
    cut.write_bytes(whole.read_bytes()[:10000])  # a copy cut short
    torch.save({"weights": torch.zeros(3)}, plain)
    expected = {
        tmp_path / "missing.pt": "no such file",
        cut: "incomplete (a copy or download cut short?) or not a torch file",
        plain: "a torch file, but not a checkpoint or bundle of rsis (it has no format_version)",
    }
    for model, reason in expected.items():
        assert main(["predict", "--model", str(model), *photo]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert error == [f"rsis predict: error: --model {model}: {reason}; {give}"]
    assert not (tmp_path / "out").exists()
