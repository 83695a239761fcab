"""Metrics against a brute-force numpy reference, streaming, conventions and the real sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rsis.breakdowns import expression_template
from rsis.cli import main
from rsis.data.cache import resize_mask
from rsis.errors import UserError
from rsis.metrics import (
    PRECISION_THRESHOLDS,
    MetricAccumulator,
    _counts_numpy,
    _counts_torch,
    binarize,
    read_metrics_json,
    resize_scores,
    write_metrics_json,
)

RUN = {"embedding": "mean", "transform": "pca", "dim": 64, "order": "random", "batch_size": 32}


def reference_ious(pred: np.ndarray, gt: np.ndarray) -> tuple[list[int], list[int], list[float]]:
    """Pixel by pixel, referent by referent: intersections, unions and IoUs."""
    inters, unions, ious = [], [], []
    for p, g in zip(pred, gt, strict=True):
        inter = sum(1 for a, b in zip(p.ravel(), g.ravel(), strict=True) if a and b)
        union = sum(1 for a, b in zip(p.ravel(), g.ravel(), strict=True) if a or b)
        inters.append(inter)
        unions.append(union)
        ious.append(inter / union if union else 1.0)
    return inters, unions, ious


@pytest.fixture(scope="module")
def random_masks() -> tuple[np.ndarray, np.ndarray]:
    """40 referents of 9x11 with varied densities, plus empty predictions and ground truths."""
    rng = np.random.default_rng(0)
    density = rng.uniform(0.05, 0.9, size=(40, 1, 1))
    gt = rng.random((40, 9, 11)) < density
    pred = rng.random((40, 9, 11)) < density
    pred[:4] = False  # empty predictions, non-empty ground truth
    gt[4:8] = False  # empty ground truth, non-empty prediction
    pred[8:10] = gt[8:10] = False  # both empty
    pred[10:12] = gt[10:12]  # perfect
    return pred, gt


def test_matches_brute_force_reference(random_masks):
    pred, gt = random_masks
    inters, unions, ious = reference_ious(pred, gt)
    accumulator = MetricAccumulator(resolution="9x11")
    accumulator.update(torch.from_numpy(pred), torch.from_numpy(gt), ids=np.arange(100, 140))

    table = accumulator.per_referent()
    assert table["id"].tolist() == list(range(100, 140))
    assert table["intersection"].tolist() == inters
    assert table["union"].tolist() == unions
    np.testing.assert_allclose(table["iou"], ious)
    assert table["iou"][:8].tolist() == [0.0] * 8  # empty prediction or empty ground truth
    assert table["iou"][8:12].tolist() == [1.0] * 4  # both empty, and perfect

    metrics = accumulator.summary()["metrics"]
    assert metrics["n_referents"] == 40
    assert metrics["overall_iou"] == pytest.approx(sum(inters) / sum(unions))
    assert metrics["instance_iou"] == pytest.approx(np.mean(ious))
    for x in PRECISION_THRESHOLDS:
        assert metrics[f"prec@{x}"] == pytest.approx(np.mean([iou >= x for iou in ious]))
    assert 0.0 < metrics["prec@0.9"] < metrics["prec@0.5"] < 1.0


def test_identical_masks_score_one_and_disjoint_zero():
    gt = torch.zeros(3, 5, 6, dtype=torch.bool)
    gt[0, :2] = True
    gt[1, :, :3] = True
    gt[2, 4, 5] = True
    same = MetricAccumulator(resolution="5x6")
    same.update(gt, gt.clone())
    disjoint = MetricAccumulator(resolution="5x6")
    disjoint.update(~gt, gt)
    for name in ("overall_iou", "instance_iou", *(f"prec@{x}" for x in PRECISION_THRESHOLDS)):
        assert same.summary()["metrics"][name] == 1.0
        assert disjoint.summary()["metrics"][name] == 0.0


def test_streaming_in_chunks_equals_all_at_once(random_masks):
    pred, gt = (torch.from_numpy(m) for m in random_masks)
    whole = MetricAccumulator(resolution="9x11")
    whole.update(pred, gt)
    chunked = MetricAccumulator(resolution="9x11")
    for start, stop in ((0, 7), (7, 8), (8, 8), (8, 31), (31, 40)):
        chunked.update(pred[start:stop], gt[start:stop])
    assert chunked.per_referent().equals(whole.per_referent())
    assert chunked.summary() == whole.summary()


def test_overall_iou_weights_by_area_instance_iou_does_not():
    gt = torch.zeros(2, 10, 10, dtype=torch.bool)
    pred = gt.clone()
    gt[0] = True  # large referent, 100 px, half predicted
    pred[0, :5] = True
    gt[1, 0, 0] = True  # tiny referent, missed
    accumulator = MetricAccumulator(resolution="10x10")
    accumulator.update(pred, gt)
    metrics = accumulator.summary()["metrics"]
    assert metrics["overall_iou"] == pytest.approx(50 / 101)
    assert metrics["instance_iou"] == pytest.approx(0.25)
    assert metrics["prec@0.5"] == 0.5


def test_torch_counts_used_on_gpu_match_numpy_counts(random_masks):
    pred, gt = (torch.from_numpy(m) for m in random_masks)
    assert np.array_equal(_counts_torch(pred, gt), _counts_numpy(pred, gt))
    assert _counts_torch(pred[:0], gt[:0]).shape == (0, 3)


def test_summary_states_conventions():
    accumulator = MetricAccumulator(resolution="original image size")
    accumulator.update(
        torch.ones(1, 2, 2, dtype=torch.uint8), torch.ones(1, 2, 2, dtype=torch.uint8)
    )
    conventions = accumulator.summary()["conventions"]
    assert conventions["resolution"] == "original image size"
    assert "logit > 0" in conventions["threshold"]
    assert "probability > 0.5" in conventions["threshold"]
    assert conventions["overall_iou"].startswith("oIoU")
    assert conventions["instance_iou"].startswith("mIoU")
    assert "scores IoU 1" in conventions["empty_union"]


def test_bad_input_is_rejected():
    accumulator = MetricAccumulator(resolution="2x2")
    with pytest.raises(TypeError, match="binarize"):
        accumulator.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        accumulator.update(torch.zeros(1, 2, 2, dtype=torch.bool), torch.zeros(1, 2, 3).bool())
    with pytest.raises(ValueError, match="no samples"):
        accumulator.summary()
    masks = torch.ones(2, 2, 2, dtype=torch.bool)
    accumulator.update(masks, masks, ids=[7, 8])
    accumulator.update(masks[:1], masks[:1], ids=[7])
    with pytest.raises(ValueError, match=r"more than once: \[7\]"):
        accumulator.summary()


def test_binarize_logits_and_probabilities_agree():
    logits = torch.linspace(-4, 4, 81).reshape(1, 9, 9)
    assert torch.equal(binarize(logits), binarize(torch.sigmoid(logits), probabilities=True))
    assert binarize(logits).sum() == 40  # 0.0 itself is background


def test_resize_scores_to_original_size():
    scores = torch.tensor([[[-1.0, 1.0], [-1.0, 1.0]]])
    resized = resize_scores(scores, (2, 4))
    # bilinear, align_corners=False: columns at x = -0.25, 0.25, 0.75, 1.25 of the input grid
    expected = torch.tensor([[[-1.0, -0.5, 0.5, 1.0], [-1.0, -0.5, 0.5, 1.0]]])
    torch.testing.assert_close(resized, expected)
    assert binarize(resized).tolist() == [[[False, False, True, True]] * 2]


def test_metrics_json_round_trip_and_validation(tmp_path):
    accumulator = MetricAccumulator(resolution="4x4")
    accumulator.update(torch.ones(2, 4, 4, dtype=torch.bool), torch.ones(2, 4, 4, dtype=torch.bool))
    path = tmp_path / "val~first.json"
    written = write_metrics_json(
        path,
        accumulator.summary(),
        run={**RUN, "name": "demo"},
        split="val",
        expression="first",
        dataset="refcoco",
        text_model="all-MiniLM-L6-v2",
        backbone="resnet101",
        image_size=(240, 427),
    )
    assert read_metrics_json(path) == written
    assert written["metrics"]["n_referents"] == 2
    assert written["run"]["name"] == "demo"

    broken = dict(written, metrics={k: v for k, v in written["metrics"].items() if k != "prec@0.7"})
    path.write_text(json.dumps(broken))
    with pytest.raises(UserError, match=r"val~first.json: missing field\(s\) metrics.prec@0.7"):
        read_metrics_json(path)
    path.write_text(json.dumps(dict(written, run={"embedding": "mean"})))
    with pytest.raises(UserError, match=r"run\.transform, run\.dim, run\.order, run\.batch_size"):
        read_metrics_json(path)
    path.write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_metrics_json(path)


@pytest.mark.parametrize(("split", "count"), [("val", 13), ("testA", 4), ("testB", 8)])
def test_oracle_on_real_sample(sample_refer, split, count):
    """Ground truth scored against itself at 240x427 gives 1 for every metric."""
    refs = sample_refer.refs_in_split(split)
    originals = [sample_refer.decode_mask(ref["ann_id"]) for ref in refs]
    gt = torch.from_numpy(np.stack([resize_mask(m, 240, 427) for m in originals]))
    accumulator = MetricAccumulator(resolution="240x427")
    accumulator.update(gt, gt.clone(), ids=[ref["ref_id"] for ref in refs])
    metrics = accumulator.summary()["metrics"]
    assert metrics["n_referents"] == count
    assert all(metrics[k] == 1.0 for k in metrics if not k.startswith("n_"))
    assert (accumulator.per_referent()["gt_area"] > 0).all()

    # Scoring at the original size: upsample the 240x427 masks, compare with the originals.
    original = MetricAccumulator(resolution="original image size")
    for ref, mask_240, mask in zip(refs, gt, originals, strict=True):
        upsampled = binarize(resize_scores(mask_240[None].float(), mask.shape), probabilities=True)
        original.update(upsampled, torch.from_numpy(mask[None]), ids=[ref["ref_id"]])
    metrics = original.summary()["metrics"]
    assert 0.9 < metrics["instance_iou"] < 1.0
    assert 0.9 < metrics["overall_iou"] < 1.0


def test_per_expression_type_breakdown_on_a_hand_made_case():
    """Three demo sentences, one per template, and a second attribute one: known IoUs."""
    sentences = {
        10: "the small red circle",  # attribute: 4 of 8 px predicted, no extra: IoU 1/2
        11: "the big blue square",  # attribute: perfect, 2 px: IoU 1
        12: "the leftmost star",  # extreme: 2 px right, 2 px extra: IoU 2/4
        13: "green triangle left of the red circle",  # relation: missed, 3 px: IoU 0
    }
    gt = torch.zeros(4, 4, 4, dtype=torch.bool)
    pred = gt.clone()
    gt[0, :2] = True
    pred[0, 0] = True
    gt[1, 3, :2] = pred[1, 3, :2] = True
    gt[2, 2, :2] = pred[2, 2, :2] = True
    pred[2, 2, 2:] = True
    gt[3, 3, 2] = gt[3, 0, 3] = gt[3, 1, 3] = True
    accumulator = MetricAccumulator(resolution="4x4")
    accumulator.update(pred, gt, ids=list(sentences))
    groups = {"expression_type": {i: expression_template(s) for i, s in sentences.items()}}
    parts = accumulator.summary(groups)["breakdowns"]["expression_type"]
    assert set(parts) == {"attribute", "extreme", "relation"}
    assert parts["attribute"]["instance_iou"] == pytest.approx((0.5 + 1.0) / 2)
    assert parts["attribute"]["overall_iou"] == pytest.approx((4 + 2) / (8 + 2))
    assert parts["attribute"]["n_samples"] == 2
    assert parts["extreme"]["instance_iou"] == parts["extreme"]["overall_iou"] == 0.5
    assert parts["relation"]["instance_iou"] == parts["relation"]["overall_iou"] == 0.0


def test_bench_metrics_scores_on_the_cpu_and_refuses_a_bad_device_in_one_line(capsys):
    """``rsis bench metrics`` keeps the CPU as its default; its ``--device`` goes through
    ``resolve_device``."""
    sizes = ["--referents", "20", "--height", "8", "--width", "8", "--chunk", "10"]
    assert main(["bench", "metrics", *sizes]) == 0
    assert "metrics on cpu: 20 referents at 8x8, chunks of 10" in capsys.readouterr().out
    assert main(["bench", "metrics", *sizes, "--device", "gpu0"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "rsis bench: error: --device 'gpu0': give auto, cpu, cuda or cuda:<index>"
    )
