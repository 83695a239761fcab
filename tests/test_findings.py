"""The findings check on hand-made metrics whose verdicts are known."""

from __future__ import annotations

import math

import pandas as pd

from rsis.findings import AGREES, DISAGREES, UNRESOLVED, check_claims, findings_markdown

SEEDS = (0, 1, 2)
NOISE = {0: -0.5, 1: 0.0, 2: 0.5}  # the same for every run: seeds move all runs alike
TABLE1_FIXED = {"order": "random", "batch_size": 32}
TABLE2_FIXED = {"embedding": "mean", "transform": "pca", "dim": 64}


def _table1_value(embedding: str, transform: str, dim: object) -> float:
    value = 30.0 + (5.0 if embedding == "mean" else 0.0)  # encoded layers +5: agrees
    value += {"none": 12.0, "pca": 10.0, "linear": 0.0}[transform]  # native best: disagrees
    return value  # 64 and 128 equal: not resolved; PCA +10 over linear: agrees


def _table2_value(order: str, batch_size: int) -> float:
    value = 60.0 - 3.0 * math.log2(batch_size)  # smaller batches better, 16 best: agrees
    return value + {"random": 0.0, "area": -8.0, "dataset": 4.0}[order]  # sorted -8, dataset +4


def _runs() -> list[tuple[dict, float]]:
    runs = []
    for embedding in ("pooled", "mean"):
        for transform, dim in (
            ("none", "native"),
            *((t, d) for t in ("pca", "linear") for d in (128, 64)),
        ):
            run = {"embedding": embedding, "transform": transform, "dim": dim, **TABLE1_FIXED}
            runs.append((run, _table1_value(embedding, transform, dim)))
    for order, batch_size in (("area", 128), ("area", 32), ("random", 128), ("random", 64),
                              ("random", 16), ("dataset", 128)):  # fmt: skip
        run = {**TABLE2_FIXED, "order": order, "batch_size": batch_size}
        runs.append((run, _table2_value(order, batch_size)))
    return runs  # random order, batch 32 is Table 1's mean-pca-64 run: 45 in both formulas


def hand_made_frame() -> pd.DataFrame:
    rows = []
    for run, value in _runs():
        for seed in SEEDS:
            for split, offset in (("val", 1.0), ("testA", 2.0), ("testB", -2.0)):
                instance = value + offset + NOISE[seed]
                overall = instance - 3.0
                rows.append(run | dict(seed=seed, split=split, expression="first",
                                       instance_iou=instance, overall_iou=overall))  # fmt: skip
                drift = 0.2 if seed % 2 else -0.3  # |random - first| = 0.2 or 0.3 < 1: agrees
                rows.append(rows[-1] | dict(expression="random", overall_iou=overall + drift))
    return pd.DataFrame(rows).assign(decoder="paper")  # the paper's decoder, as every grid row


def test_every_claim_gets_its_known_verdict():
    frame = hand_made_frame()
    findings = check_claims(frame.drop_duplicates(), TABLE1_FIXED, TABLE2_FIXED)
    verdicts = [f.verdict for f in findings]
    assert verdicts == [
        AGREES,  # encoded layers beat pooled
        DISAGREES,  # reducing the dimension helps
        UNRESOLVED,  # 64 beats 128
        AGREES,  # PCA beats linear
        AGREES,  # random beats sorted
        DISAGREES,  # random beats the dataset's order
        AGREES,  # smaller batches are better
        AGREES,  # 16 is the best
        AGREES,  # first vs random expression < 1 point
    ]
    encoded = findings[0]
    assert encoded.difference.startswith("+5.00 (A 41.40 ± 0.50 (n=3); B 36.40 ± 0.50")
    assert findings[2].p_value == 1.0  # identical per-seed values: no difference at all
    assert findings[6].difference.startswith("-3.00 points per doubling")
    assert "batch 32 (best other)" in findings[7].comparison
    assert findings[8].difference.startswith("mean abs(random - first) 0.27 ± 0.06 (n=3)")


def test_one_seed_resolves_nothing_and_the_file_lists_every_claim():
    frame = hand_made_frame()
    one_seed = frame[frame["seed"] == 0]
    findings = check_claims(one_seed, TABLE1_FIXED, TABLE2_FIXED)
    assert len(findings) == 9
    assert all(f.verdict.startswith(UNRESOLVED) for f in findings if "regression" not in f.test)
    text = findings_markdown(findings, one_seed)
    for finding in findings:
        assert finding.claim in text and finding.verdict in text
    assert "Seeds: 0." in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 9 and len({row.count("|") for row in rows}) == 1  # no stray pipe


def test_claims_without_runs_say_so():
    frame = hand_made_frame()
    keep = (frame["embedding"] == "mean") & (frame["transform"] == "pca")
    only_pca = frame[keep & (frame["dim"] == 64) & (frame["order"] == "random")]
    findings = check_claims(only_pca, TABLE1_FIXED, TABLE2_FIXED)
    assert findings[0].verdict == f"{UNRESOLVED} (the grid lacks these runs)"
    assert findings[2].verdict == f"{UNRESOLVED} (one reduced dimension)"
    assert findings[4].verdict == f"{UNRESOLVED} (the grid lacks these runs)"
