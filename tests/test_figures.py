"""Qualitative figures: colours, outlines, wrapped legends, pixel layout and the command."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from rsis.data.cache import resize_mask
from rsis.errors import UserError
from rsis.figures.command import register, upsample
from rsis.figures.palette import FILL_ALPHA, paint_referents, referent_colors
from rsis.figures.panels import (
    GAP_PX,
    TITLE_PX,
    Sample,
    error_map,
    inverse_order_figure,
    qualitative_figure,
)
from rsis.figures.text import INDENT_PX, LINE_PX, font, legend_lines, wrap
from rsis.predictions import Predictions, encode_masks, save_predictions

BLUE, GREEN, RED, BLACK = [0, 0, 255], [0, 255, 0], [255, 0, 0], [0, 0, 0]
WHITE = [255, 255, 255]


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


def test_paint_referents_draws_an_outline_and_a_light_fill():
    image = np.full((240, 300, 3), 100, np.uint8)
    masks = np.zeros((2, 240, 300), bool)
    masks[0, 50:150, 50:150] = True
    masks[1, 160:200, 200:280] = True
    painted = paint_referents(image, masks)
    colours = referent_colors(2)
    assert colours[0].tolist() == [31, 119, 180]  # tab10 blue for referent 1
    assert painted[50, 100].tolist() == colours[0].tolist()  # on the border: solid colour
    assert painted[52, 100].tolist() == colours[0].tolist()  # outline 3 px thick at 240 px
    assert painted[53, 100].tolist() != colours[0].tolist()
    assert painted[49, 100].tolist() == [0, 0, 0]  # a black ring just outside the mask
    fill = np.round((1 - FILL_ALPHA) * 100 + FILL_ALPHA * colours[0].astype(float))
    assert painted[100, 100].tolist() == fill.tolist()  # inside: light fill
    assert (
        painted[180, 240].tolist()
        == np.round((1 - FILL_ALPHA) * 100 + FILL_ALPHA * colours[1].astype(float)).tolist()
    )
    assert painted[10, 10].tolist() == [100, 100, 100]  # outside every mask: untouched


def test_wrap_keeps_every_word_and_fits_the_width():
    text = " ".join(f"word{i}" for i in range(20)) + " " + "x" * 60
    lines = wrap(text, 150)
    assert len(lines) > 3
    assert all(font().getlength(line) <= 150 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert wrap("short", 150) == ["short"]


def test_legend_puts_a_swatch_on_the_first_line_of_each_entry_only():
    entries = [("1. " + "long " * 30, (1, 2, 3)), ("2. short", (4, 5, 6))]
    lines = legend_lines(entries, 200)
    swatched = [color for _, color in lines if color is not None]
    assert swatched == [(1, 2, 3), (4, 5, 6)]
    assert lines[-1] == ("2. short", (4, 5, 6))
    assert all(font().getlength(text) <= 200 - INDENT_PX for text, _ in lines)


def make_sample(n_referents: int, size: tuple[int, int] = (240, 320)) -> Sample:
    height, width = size
    image = np.full((height, width, 3), 200, np.uint8)
    gt = np.zeros((n_referents, height, width), bool)
    gt[0, :, : width // 2] = True
    pred = np.zeros_like(gt)
    pred[0, :, : 3 * width // 4] = True
    return Sample(
        image=image,
        gt=gt,
        pred=pred,
        expressions=[f"referent {i}" for i in range(n_referents)],
        pred_inverse=pred.copy(),
    )


def test_qualitative_figure_pixel_layout_and_error_panel(tmp_path):
    out = tmp_path / "qualitative.png"
    qualitative_figure([make_sample(2), make_sample(3)], out)
    with Image.open(out) as png:
        # 4 panels of 320 with gaps; titles once (same width); one legend line per expression
        rows = 2 * 240 + 5 * LINE_PX + 3 * GAP_PX
        assert png.size == (4 * 320 + 5 * GAP_PX, TITLE_PX + rows)
        pixels = np.asarray(png.convert("RGB"))
    top, left = GAP_PX + TITLE_PX, GAP_PX + 3 * (320 + GAP_PX)
    error_panel = pixels[top : top + 240, left : left + 320]
    assert error_panel[120, 100].tolist() == BLUE  # predicted and true
    assert error_panel[120, 200].tolist() == GREEN  # predicted only
    assert error_panel[120, 300].tolist() == BLACK  # neither
    assert pixels[top + 120, GAP_PX + 100].tolist() == [200, 200, 200]  # the image, untouched
    legend = pixels[top + 240 : top + 240 + 2 * LINE_PX, GAP_PX : GAP_PX + 12]
    swatch = referent_colors(1)[0].tolist()
    assert any(p.tolist() == swatch for p in legend.reshape(-1, 3))  # expression 1's colour


def test_inverse_order_figure_keeps_each_expressions_colour(tmp_path):
    out = tmp_path / "inverse.png"
    inverse_order_figure([make_sample(3)], out)
    with Image.open(out) as png:
        pixels = np.asarray(png.convert("RGB"))
    top = GAP_PX + TITLE_PX
    colour = referent_colors(3)[0].tolist()
    for column in (1, 2, 3):  # ground truth, original order, inverse order
        left = GAP_PX + column * (320 + GAP_PX)
        assert pixels[top + 120, left].tolist() == colour  # left border of referent 1's mask
    with pytest.raises(ValueError, match="pred_inverse"):
        inverse_order_figure([Sample(**{**make_sample(1).__dict__, "pred_inverse": None})], out)


def test_upsample_smooths_a_network_sized_mask():
    mask = np.zeros((1, 6, 8), bool)
    mask[0, 2:4, 2:6] = True
    big = upsample(mask, (240, 320))
    assert big.shape == (1, 240, 320)
    assert abs(big.mean() - mask.mean()) < 0.01  # same area share
    assert upsample(mask, (6, 8)) is mask


def test_figures_command_on_real_sample(sample_refer, tmp_path):
    """Perfect predictions for one image and shifted ones elsewhere: the best image is shown
    at its original resolution, with its ground truth at that resolution."""
    refs = sample_refer.refs_in_split("val")
    size = (60, 107)  # the network's input size
    gt = np.stack([resize_mask(sample_refer.decode_mask(r["ann_id"]), *size) for r in refs])
    image_of = np.array([r["image_id"] for r in refs])
    best = 444010  # the val image with the most referents (5)
    pred = gt.copy()
    pred[image_of != best] = np.roll(pred[image_of != best], 9, axis=2)
    ref_id = np.array([r["ref_id"] for r in refs])
    sent_id = np.array([r["sentences"][0]["sent_id"] for r in refs])
    save_predictions(tmp_path / "p.h5", Predictions(ref_id, sent_id, encode_masks(pred)))
    inverse = Predictions(ref_id[::-1].copy(), sent_id[::-1].copy(), encode_masks(pred[::-1]))
    save_predictions(tmp_path / "q.h5", inverse)

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["figures", "--predictions", str(tmp_path / "p.h5"),
         "--refs-root", str(sample_refer.root), "--dataset", "refcoco", "--split-by", "unc",
         "--out", str(tmp_path / "fig.png"), "--num-images", "1",
         "--inverse-predictions", str(tmp_path / "q.h5"),
         "--inverse-out", str(tmp_path / "inv.png")]
    )  # fmt: skip
    args.func(args)

    with Image.open(sample_refer.image_path(best)) as photo:
        original = np.asarray(photo.convert("RGB"))
    assert original.shape[:2] == (480, 640)
    for name in ("fig.png", "inv.png"):
        with Image.open(tmp_path / name) as png:
            assert png.size[0] == 4 * 640 + 5 * GAP_PX
            top = GAP_PX + TITLE_PX
            shown = np.asarray(png.convert("RGB"))[top : top + 480, GAP_PX : GAP_PX + 640]
        assert np.array_equal(shown, original)

    args.image_ids = [123456789]
    with pytest.raises(UserError, match="no predictions for image ids"):
        args.func(args)
