"""``rsis score`` and the peers' protocols, against values computed by their own formulas."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rsis.cli import main
from rsis.metrics import MetricAccumulator
from rsis.protocols import PROTOCOLS
from rsis.score import encode_rle, write_predictions_json
from tests.conftest import SAMPLE_ROOT

SPLITS = ("val", "testA", "testB")


def score_args(predictions, out, protocol, *extra):
    refer = ["--refs-root", str(SAMPLE_ROOT), "--dataset", "refcoco", "--split-by", "unc"]
    return ["score", *refer, "--split", *SPLITS, "--predictions", str(predictions),
            "--protocol", protocol, "--out", str(out), *extra]  # fmt: skip


def write_sample_predictions(path, refer, mask_of_ref):
    """One prediction per sentence of the sample: ``mask_of_ref(ref)`` for all its sentences."""
    samples = [
        (sent_id, ref["ref_id"], encode_rle(mask_of_ref(ref)))
        for ref in refer.refs
        for sent_id in ref["sent_ids"]
    ]
    write_predictions_json(path, samples)
    return samples


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_oracle_scores_one_under_every_protocol(protocol, sample_refer, tmp_path):
    predictions = tmp_path / "oracle.json"
    write_sample_predictions(
        predictions, sample_refer, lambda r: sample_refer.decode_mask(r["ann_id"])
    )
    out = tmp_path / "metrics.json"
    assert main(score_args(predictions, out, protocol, "--resolution", "original")) == 0
    record = json.loads(out.read_text())
    assert record["metrics"]["overall_iou"] == 1.0
    assert record["metrics"]["instance_iou"] == 1.0
    assert record["metrics"]["n_referents"] == 25
    assert record["metrics"]["n_samples"] == (25 if protocol == "rsis" else 74)
    assert record["protocol"] == protocol
    people = record["breakdowns"]["category"]["person"]
    assert people["n_referents"] == 15 and people["instance_iou"] == 1.0
    table = out.with_suffix(".md").read_text()
    assert "original image size" in table and f"protocol {protocol}" in table
    assert "in percent" in table and "fractions" not in table  # the table's units only
    assert "| 100.00 |" in table


def graded_masks(n_per_iou: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """25 referents whose IoUs are exactly 0.5, 0.6, 0.7, 0.8, 0.9 (100-pixel ground truth)."""
    gt = torch.zeros(5 * n_per_iou, 20, 20, dtype=torch.bool)
    gt[:, :10, :10] = True
    pred = torch.zeros_like(gt)
    for row, tenths in enumerate(np.repeat([5, 6, 7, 8, 9], n_per_iou)):
        pred[row].view(-1)[np.flatnonzero(gt[row].view(-1).numpy())[: 10 * tenths]] = True
    return pred, gt


EXPECTED_PRECISION = {
    "rsis": (1.0, 0.8, 0.6, 0.4, 0.2),
    "lavt": (1.0, 0.8, 0.6, 0.4, 0.2),
    "cris": (0.8, 0.6, 0.6, 0.2, 0.2),
    "rela": (1.0, 0.8, 0.6, 0.4, 0.2),
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_precision_comparison_per_protocol(protocol):
    pred, gt = graded_masks()
    accumulator = MetricAccumulator(resolution="20x20", protocol=PROTOCOLS[protocol])
    accumulator.update(pred, gt)
    metrics = accumulator.summary()["metrics"]
    got = tuple(metrics[f"prec@{x}"] for x in (0.5, 0.6, 0.7, 0.8, 0.9))
    assert got == pytest.approx(EXPECTED_PRECISION[protocol], abs=1e-12)
    assert metrics["instance_iou"] == pytest.approx(0.70, abs=1e-12)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_empty_ground_truth_rules(protocol):
    pred, gt = graded_masks()
    empty = torch.zeros(2, 20, 20, dtype=torch.bool)
    wrong = empty.clone()
    wrong[1, 15:, 15:] = True  # the second empty target gets a 25-pixel prediction
    accumulator = MetricAccumulator(resolution="20x20", protocol=PROTOCOLS[protocol])
    accumulator.update(torch.cat([pred, wrong]), torch.cat([gt, empty]))
    table = accumulator.per_referent()
    empty_empty = {"rsis": 1.0, "lavt": 0.0, "cris": 0.0, "rela": 1.0}[protocol]
    assert table["iou"].tolist()[-2:] == [empty_empty, 0.0]
    metrics = accumulator.summary()["metrics"]
    assert metrics["instance_iou"] == pytest.approx((25 * 0.7 + empty_empty) / 27, abs=1e-12)
    # Both empty targets: I = 0; the false positive adds its 25 pixels to the union.
    assert metrics["overall_iou"] == pytest.approx(1750 / 2525, abs=1e-12)
    got = [metrics[f"prec@{x}"] for x in (0.5, 0.6, 0.7, 0.8, 0.9)]
    if protocol == "rela":  # Pr@ over the 25 samples with a target only
        assert got == pytest.approx(EXPECTED_PRECISION["rela"], abs=1e-12)
    else:
        hits = np.asarray(EXPECTED_PRECISION[protocol]) * 25 + (empty_empty >= 0.5)
        assert got == pytest.approx(hits / 27, abs=1e-12)


def box_or_truth(refer, ref) -> np.ndarray:
    """One prediction for all sentences of a referent: the ground truth for referents with
    fewer than 3 sentences, its box for the others."""
    if len(ref["sentences"]) < 3:
        return refer.decode_mask(ref["ann_id"])
    image = refer.images[ref["image_id"]]
    box = refer.annotations[ref["ann_id"]]["bbox"]
    x, y, w, h = (round(v) for v in box)
    mask = np.zeros((image["height"], image["width"]), np.uint8)
    mask[y : y + h, x : x + w] = 1
    return mask


def test_every_sentence_weights_referents_by_their_sentences(sample_refer, tmp_path):
    predictions = tmp_path / "boxes.json"
    write_sample_predictions(predictions, sample_refer, lambda r: box_or_truth(sample_refer, r))
    inter, union, weight = [], [], []
    for ref in sample_refer.refs:  # independent: numpy on the decoded masks, weights by hand
        pred, gt = (
            box_or_truth(sample_refer, ref).astype(bool),
            sample_refer.decode_mask(ref["ann_id"]),
        )
        inter.append(np.logical_and(pred, gt).sum())
        union.append(np.logical_or(pred, gt).sum())
        weight.append(len(ref["sentences"]))
    inter, union, weight = map(np.asarray, (inter, union, weight))
    assert len(weight) == 25 and weight.sum() == 74
    first = inter.sum() / union.sum()
    every = (weight * inter).sum() / (weight * union).sum()
    mean_every = (weight * inter / union).sum() / weight.sum()
    assert abs(first - every) > 1e-3

    scored = {}
    for protocol in ("rsis", "lavt"):
        out = tmp_path / f"{protocol}.json"
        assert main(score_args(predictions, out, protocol, "--resolution", "original")) == 0
        scored[protocol] = json.loads(out.read_text())["metrics"]
    assert scored["rsis"]["overall_iou"] == pytest.approx(first, abs=1e-12)
    assert scored["lavt"]["overall_iou"] == pytest.approx(every, abs=1e-12)
    assert scored["lavt"]["instance_iou"] == pytest.approx(mean_every, abs=1e-12)
    assert scored["lavt"]["n_samples"] == 74


def edit_predictions(path, change):
    entries = json.loads(path.read_text())
    path.write_text(json.dumps(change(entries)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e[1:], "has no prediction"),
        (lambda e: [*e, e[0]], "more than once"),
        (lambda e: [{**e[0], "sent_id": 999999}, *e[1:]], "sent_id 999999 is not a sentence"),
        (lambda e: [{**e[0], "ref_id": 424242}, *e[1:]], "not 424242"),
        (
            lambda e: [{**e[0], "sent_id": "12"}, *e[1:]],
            "oracle.json, entry 0: field 'sent_id' is '12', expected an integer; give "
            '--predictions a JSON list of {"sent_id", "segmentation": COCO RLE}',
        ),
        (lambda e: [*e[:2], [1, 2]], "oracle.json: entry 2 is [1, 2], not an object; give"),
        (
            lambda e: [{**e[0], "ref_id": True}, *e[1:]],
            "oracle.json, entry 0: field 'ref_id' is True, expected an integer",
        ),
        (
            lambda e: [{**e[0], "segmentation": encode_rle(np.zeros((5, 7)))}, *e[1:]],
            "5x7 mask",
        ),
        (
            lambda e: [{**e[0], "segmentation": {**e[0]["segmentation"], "counts": ""}}, *e[1:]],
            "corrupt RLE",
        ),
    ],
)
def test_bad_predictions_name_the_sentence(change, message, sample_refer, tmp_path, capsys):
    predictions = tmp_path / "oracle.json"
    samples = write_sample_predictions(
        predictions, sample_refer, lambda r: sample_refer.decode_mask(r["ann_id"])
    )
    edit_predictions(predictions, change)
    out = tmp_path / "metrics.json"
    assert main(score_args(predictions, out, "lavt")) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("rsis score: error")]
    assert len(errors) == 1 and message in errors[0]
    if message in ("has no prediction", "more than once", "5x7 mask", "corrupt RLE"):
        assert f"sent_id {samples[0][0]}" in errors[0]
    assert not out.exists()
