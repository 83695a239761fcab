"""Qualitative figures: error colours, pixel sizes, the predictions file and the command."""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import pytest
from PIL import Image

from rsis.data.cache import write_cache
from rsis.errors import UserError
from rsis.figures import (
    Predictions,
    Sample,
    encode_masks,
    error_map,
    inverse_order_figure,
    load_predictions,
    paint_referents,
    qualitative_figure,
    referent_colors,
    register,
    save_predictions,
)

BLUE, GREEN, RED, BLACK = [0, 0, 255], [0, 255, 0], [255, 0, 0], [0, 0, 0]


def test_error_map_colours_each_outcome():
    pred = np.array([[1, 1], [0, 0]], bool)
    gt = np.array([[1, 0], [1, 0]], bool)
    colours = error_map(pred, gt)
    assert colours.dtype == np.uint8
    assert colours.tolist() == [[BLUE, GREEN], [RED, BLACK]]


def test_error_map_compares_each_referent_with_its_own_ground_truth():
    gt = np.zeros((2, 1, 3), bool)
    gt[0, 0, 0] = gt[1, 0, 1] = True
    pred = np.zeros_like(gt)
    pred[0, 0, 0] = True  # referent 1 right
    pred[1, 0, 0] = True  # referent 2 segmented on referent 1's object
    # pixel 0: TP for referent 1 but FP for referent 2 -> FP; pixel 1: missed -> FN
    assert error_map(pred, gt).tolist() == [[GREEN, RED, BLACK]]


def test_paint_referents_blends_each_referent_colour():
    image = np.full((2, 2, 3), 100, np.uint8)
    masks = np.zeros((2, 2, 2), bool)
    masks[0, 0, 0] = masks[1, 1, 1] = True
    painted = paint_referents(image, masks, alpha=0.5)
    colours = referent_colors(2)
    expected_first = np.round(0.5 * 100 + 0.5 * colours[0].astype(float))
    assert painted[0, 0].tolist() == expected_first.tolist()
    assert painted[1, 1].tolist() == np.round(50 + 0.5 * colours[1].astype(float)).tolist()
    assert painted[0, 1].tolist() == [100, 100, 100]
    assert colours[0].tolist() == [31, 119, 180]  # tab10 blue for referent 1


def make_sample(n_referents: int) -> Sample:
    image = np.full((30, 40, 3), 200, np.uint8)
    gt = np.zeros((n_referents, 30, 40), bool)
    gt[0, :, :20] = True
    pred = np.zeros_like(gt)
    pred[0, :, :30] = True
    return Sample(
        image=image,
        gt=gt,
        pred=pred,
        expressions=[f"referent {i}" for i in range(n_referents)],
        pred_inverse=pred[::-1].copy(),
    )


def test_qualitative_figure_pixel_size_and_error_panel(tmp_path):
    out = tmp_path / "qualitative.png"
    qualitative_figure([make_sample(2), make_sample(3)], out)
    with Image.open(out) as png:
        assert png.size == (4 * 40 + 3 * 4, 24 + (30 + 2 * 16) + (30 + 3 * 16))
        pixels = np.asarray(png.convert("RGB"))
    error_panel = pixels[24 : 24 + 30, 3 * 44 : 3 * 44 + 40]
    assert error_panel[15, 5].tolist() == BLUE  # predicted and true
    assert error_panel[15, 25].tolist() == GREEN  # predicted only
    assert error_panel[15, 35].tolist() == BLACK  # neither
    assert pixels[24 + 15, 5].tolist() == [200, 200, 200]  # the image panel, untouched


def test_inverse_order_figure(tmp_path):
    out = tmp_path / "inverse.png"
    inverse_order_figure([make_sample(3)], out)
    with Image.open(out) as png:
        assert png.size == (172, 24 + 30 + 3 * 16)
    with pytest.raises(ValueError, match="pred_inverse"):
        inverse_order_figure([Sample(**{**make_sample(1).__dict__, "pred_inverse": None})], out)


def test_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((5, 7, 9)) < 0.4
    masks[2] = False
    predictions = Predictions(
        ref_id=np.arange(10, 15),
        sent_id=np.arange(100, 105),
        rles=encode_masks(masks),
        attrs={"split": "val", "order": "dataset"},
    )
    path = tmp_path / "predictions.h5"
    save_predictions(path, predictions)
    loaded = load_predictions(path)
    assert loaded.ref_id.tolist() == list(range(10, 15))
    assert loaded.sent_id.tolist() == list(range(100, 105))
    assert loaded.attrs == {"split": "val", "order": "dataset"}
    assert np.array_equal(loaded.masks(range(5)), masks)

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["ref_id"] = np.arange(3)
    with pytest.raises(UserError, match="missing sent_id, counts, size"):
        load_predictions(tmp_path / "other.h5")


def test_figures_command_on_real_sample(sample_refer, tmp_path):
    """Perfect predictions for one image and degraded ones elsewhere: the best image is shown."""
    cache = tmp_path / "val.h5"
    write_cache(sample_refer, "val", cache, 60, 107)
    with h5py.File(cache) as f:
        gt = f["masks"][:].astype(bool)
        ref_id, image_index = f["ref_id"][:], f["image_index"][:]
        first_sentence = f["sent_ids"][:][f["sent_ptr"][:-1]]
        images = f["images"][:]
    best_row = int(np.bincount(image_index).argmax())  # the image with the most referents
    pred = gt.copy()
    pred[image_index != best_row] = np.roll(pred[image_index != best_row], 9, axis=2)
    save_predictions(tmp_path / "p.h5", Predictions(ref_id, first_sentence, encode_masks(pred)))
    inverse = Predictions(
        ref_id[::-1].copy(), first_sentence[::-1].copy(), encode_masks(pred[::-1])
    )
    save_predictions(tmp_path / "q.h5", inverse)

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["figures", "--predictions", str(tmp_path / "p.h5"), "--cache", str(cache),
         "--refs-root", str(sample_refer.root), "--dataset", "refcoco", "--split-by", "unc",
         "--out", str(tmp_path / "fig.png"), "--num-images", "1",
         "--inverse-predictions", str(tmp_path / "q.h5"),
         "--inverse-out", str(tmp_path / "inv.png")]
    )  # fmt: skip
    args.func(args)

    n_referents = int((image_index == best_row).sum())
    for name in ("fig.png", "inv.png"):
        with Image.open(tmp_path / name) as png:
            assert png.size == (4 * 107 + 12, 24 + 60 + 16 * n_referents)
            shown = np.asarray(png.convert("RGB"))[24 : 24 + 60, :107]
        assert np.array_equal(shown, images[best_row])

    args.image_ids = [123456789]
    with pytest.raises(UserError, match="no predictions for image ids"):
        args.func(args)
