"""The paper's claims (supplement Sections 3.2, 3.4, 3.5) checked against our runs over seeds.

Each claim compares groups of grid runs of the paper's decoder (our variant's runs,
``decoder: coord``, claim nothing). Per seed, a group's value is the mean instance IoU
(percent) over its runs and over the test splits (every evaluated split but ``val``, which
picked the best epoch; ``val`` when there is no other), first expression per referent. The
tests, at level ``ALPHA``:

- a comparison "A beats B": Welch's t-test (``scipy.stats.ttest_ind``, unequal variances) on
  the per-seed values of A and of B. Runs are matched on the coordinates the claim does not
  vary, so both groups cover the same rows;
- "smaller batches are better": a linear regression of the value on log2(batch size) over
  every (seed, batch size) point of the random-order rows (``scipy.stats.linregress``);
- "the first versus a random expression changes overall IoU by less than 1": per seed, the
  mean over runs and splits of |random - first| overall IoU; a one-sided one-sample t-test of
  that mean against 1 point.

A verdict is ``agrees`` or ``disagrees`` when the test rejects at ``ALPHA`` in that direction,
``not resolved`` otherwise (also when a group has fewer than two seeds, or the grid lacks the
runs a claim needs). The verdicts are computed, never tuned toward: the demo is not the
paper's data.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from rsis.cli import add_command, output_file
from rsis.io import atomic_path
from rsis.metrics import read_result_records
from rsis.runs import PAPER_DECODER, RunSpec, grid_tables
from rsis.tables import mean_sd_cell, metrics_frame, parse_grid

ALPHA = 0.05
AGREES, DISAGREES, UNRESOLVED = "agrees", "disagrees", "not resolved"
PAPER_TRANSFORMS: tuple[str, ...] = ("none", "pca", "linear")  # Table 1's (linear_pca is ours)
EXPRESSION_MARGIN = 1.0  # points of overall IoU (supplement, Section 3.2)
COORDINATES: tuple[str, ...] = tuple(field.name for field in fields(RunSpec))


@dataclass(frozen=True)
class Finding:
    """One claim and what our runs say about it."""

    claim: str
    comparison: str
    difference: str
    test: str
    p_value: float | None
    verdict: str


def test_splits(frame: pd.DataFrame) -> list[str]:
    """The splits a claim is scored on: every split but ``val``, or ``val`` alone."""
    splits = sorted(set(frame["split"]))
    others = [split for split in splits if split != "val"]
    return others or splits


def _select(frame: pd.DataFrame, selector: Mapping[str, object]) -> pd.DataFrame:
    keep = np.ones(len(frame), dtype=bool)
    for column, wanted in selector.items():
        allowed = wanted if isinstance(wanted, tuple) else (wanted,)
        keep &= frame[column].isin(allowed).to_numpy()
    return frame[keep]


def _per_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Mean of ``metric`` over a group's runs and splits, one value per seed."""
    return rows.groupby("seed")[metric].mean()


def _spread(values: pd.Series) -> str:
    sd = values.std(ddof=1) if len(values) > 1 else math.nan
    return mean_sd_cell(values.mean(), sd, len(values))


def _direction_verdict(statistic: float, p_value: float, expected_sign: int) -> str:
    if math.isnan(p_value) or p_value >= ALPHA:
        return UNRESOLVED
    return AGREES if np.sign(statistic) == expected_sign else DISAGREES


def welch(
    claim: str, label_a: str, label_b: str, a: pd.Series, b: pd.Series, note: str = ""
) -> Finding:
    """Finding for "A beats B" from per-seed values of A and of B."""
    comparison = f"{label_a} vs {label_b}" + (f" ({note})" if note else "")
    test = "Welch's t-test over seeds, two-sided"
    if len(a) < 2 or len(b) < 2:
        why = f"{UNRESOLVED} (fewer than 2 seeds: {len(a)} and {len(b)})"
        return Finding(claim, comparison, _difference(a, b), test, None, why)
    result = stats.ttest_ind(a.to_numpy(), b.to_numpy(), equal_var=False)
    p_value = float(result.pvalue)
    verdict = _direction_verdict(float(result.statistic), p_value, expected_sign=1)
    return Finding(claim, comparison, _difference(a, b), test, p_value, verdict)


def _difference(a: pd.Series, b: pd.Series) -> str:
    if a.empty or b.empty:
        return "—"
    return f"{a.mean() - b.mean():+.2f} (A {_spread(a)}; B {_spread(b)})"


def _missing(claim: str, comparison: str, test: str, why: str) -> Finding:
    return Finding(claim, comparison, "—", test, None, f"{UNRESOLVED} ({why})")


def _matched(
    frame: pd.DataFrame, a: Mapping, b: Mapping, match: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of A and of B restricted to the values of ``match`` that both groups have."""
    rows_a, rows_b = _select(frame, a), _select(frame, b)
    keys_a = set(map(tuple, rows_a[list(match)].to_numpy().tolist()))
    keys_b = set(map(tuple, rows_b[list(match)].to_numpy().tolist()))
    shared = keys_a & keys_b

    def keep(rows: pd.DataFrame) -> pd.DataFrame:
        inside = [tuple(key) in shared for key in rows[list(match)].to_numpy().tolist()]
        return rows[np.asarray(inside, dtype=bool)]

    return keep(rows_a), keep(rows_b)


@dataclass(frozen=True)
class Comparison:
    """A claim "A beats B" on one table's rows, A and B matched on ``match``."""

    claim: str
    label_a: str
    label_b: str
    a: Mapping[str, object]
    b: Mapping[str, object]
    match: tuple[str, ...]

    def check(self, rows: pd.DataFrame, metric: str) -> Finding:
        rows_a, rows_b = _matched(rows, self.a, self.b, self.match)
        if rows_a.empty:
            comparison = f"{self.label_a} vs {self.label_b}"
            return _missing(self.claim, comparison, "Welch's t-test", "the grid lacks these runs")
        note = "matched on " + ", ".join(self.match)
        a, b = _per_seed(rows_a, metric), _per_seed(rows_b, metric)
        return welch(self.claim, self.label_a, self.label_b, a, b, note)


TABLE1_COMPARISONS: tuple[Comparison, ...] = (
    Comparison(
        "Encoded layers beat the pooled output",
        "encoded layers",
        "pooled output",
        {"embedding": "mean"},
        {"embedding": "pooled"},
        ("transform", "dim"),
    ),
    Comparison(
        "Reducing the dimension helps",
        "PCA or linear",
        "native size",
        {"transform": ("pca", "linear")},
        {"transform": "none"},
        ("embedding",),
    ),
    Comparison(
        "PCA beats a learned linear layer",
        "PCA",
        "linear",
        {"transform": "pca"},
        {"transform": "linear"},
        ("embedding", "dim"),
    ),
)


def smaller_dimension(rows: pd.DataFrame, metric: str) -> Finding:
    """ "64 beats 128": the smallest reduced dimension of the grid against the largest."""
    reduced = sorted({int(d) for d in rows.loc[rows["transform"] != "none", "dim"]})
    claim = "The smaller dimension beats the larger (paper: 64 beats 128)"
    if len(reduced) < 2:
        return _missing(claim, "reduced dimensions", "Welch's t-test", "one reduced dimension")
    small, large = reduced[0], reduced[-1]
    comparison = Comparison(
        claim,
        f"dim {small}",
        f"dim {large}",
        {"dim": small},
        {"dim": large},
        ("embedding", "transform"),
    )
    return comparison.check(rows, metric)


TABLE2_COMPARISONS: tuple[Comparison, ...] = (
    Comparison(
        "Random order beats sorted by size",
        "random",
        "sorted by size",
        {"order": "random"},
        {"order": "area"},
        ("batch_size",),
    ),
    Comparison(
        "Random order beats the dataset's order",
        "random",
        "dataset order",
        {"order": "random"},
        {"order": "dataset"},
        ("batch_size",),
    ),
)


def batch_trend(rows: pd.DataFrame, metric: str) -> Finding:
    """ "Smaller batches are better": regression of the value on log2(batch size)."""
    claim = "Smaller batches are better"
    test = "linear regression on log2(batch size) over (seed, batch) points, two-sided"
    random = _select(rows, {"order": "random"})
    points = random.groupby(["seed", "batch_size"])[metric].mean().reset_index()
    sizes = sorted(set(points["batch_size"]))
    comparison = "random order, batch sizes " + ", ".join(map(str, sizes))
    if len(sizes) < 2 or len(points) < 3:
        return _missing(claim, comparison, test, "fewer than two batch sizes or three points")
    fit = stats.linregress(np.log2(points["batch_size"].to_numpy(float)), points[metric])
    difference = f"{fit.slope:+.2f} points per doubling (± {fit.stderr:.2f} s.e.)"
    p_value = float(fit.pvalue)
    verdict = _direction_verdict(float(fit.slope), p_value, expected_sign=-1)
    return Finding(claim, comparison, difference, test, p_value, verdict)


def smallest_batch_best(rows: pd.DataFrame, metric: str) -> Finding:
    """ "16 is the best batch size": the smallest random-order batch vs the best other one."""
    random = _select(rows, {"order": "random"})
    sizes = sorted(set(random["batch_size"]))
    claim = f"The smallest batch is the best (paper: 16; ours: {sizes[0] if sizes else '—'})"
    if len(sizes) < 2:
        return _missing(claim, "random order", "Welch's t-test", "fewer than two batch sizes")
    means = random.groupby("batch_size")[metric].mean()
    runner_up = int(means.drop(sizes[0]).idxmax())
    a = _per_seed(_select(random, {"batch_size": sizes[0]}), metric)
    b = _per_seed(_select(random, {"batch_size": runner_up}), metric)
    return welch(claim, f"batch {sizes[0]}", f"batch {runner_up} (best other)", a, b)


def expression_choice(frame: pd.DataFrame) -> Finding:
    """ "First vs random expression changes overall IoU by less than 1 point"."""
    claim = "The first vs a random expression changes overall IoU by less than 1"
    test = (
        f"one-sided one-sample t-test of the mean abs(random - first) against {EXPRESSION_MARGIN}"
    )
    keys = ["seed", *COORDINATES, "split"]
    first = _select(frame, {"expression": "first"}).set_index(keys)["overall_iou"]
    random = _select(frame, {"expression": "random"}).set_index(keys)["overall_iou"]
    both = first.index.intersection(random.index)
    comparison = "every run and split scored both ways"
    if both.empty:
        return _missing(claim, comparison, test, "no run was scored with a random expression")
    gaps = (random[both] - first[both]).abs().groupby(level="seed").mean()
    difference = f"mean abs(random - first) {_spread(gaps)} points"
    if len(gaps) < 2 or gaps.std(ddof=1) == 0:
        return Finding(claim, comparison, difference, test, None, f"{UNRESOLVED} (< 2 seeds)")
    below = float(stats.ttest_1samp(gaps, EXPRESSION_MARGIN, alternative="less").pvalue)
    above = float(stats.ttest_1samp(gaps, EXPRESSION_MARGIN, alternative="greater").pvalue)
    verdict = AGREES if below < ALPHA else DISAGREES if above < ALPHA else UNRESOLVED
    return Finding(claim, comparison, difference, test, min(below, above), verdict)


def check_claims(
    frame: pd.DataFrame,
    table1_fixed: Mapping[str, object],
    table2_fixed: Mapping[str, object],
    metric: str = "instance_iou",
) -> list[Finding]:
    """Every claim of the paper's tables, checked on ``frame``.

    Args:
        frame: one row per (run, seed, split, expression): the coordinates, ``seed``,
            ``split``, ``expression`` and the metrics in percent (``metrics_frame``); only
            the rows of the paper's decoder count.
        table1_fixed: what every Table 1 row shares (order, batch size).
        table2_fixed: what every Table 2 row shares (embedding, transform, dim).
        metric: the metric the comparisons use.
    """
    frame = _select(frame, {"decoder": PAPER_DECODER})  # our variant's rows claim nothing
    scored = _select(frame, {"expression": "first", "split": tuple(test_splits(frame))})
    table1 = _select(_select(scored, table1_fixed), {"transform": PAPER_TRANSFORMS})
    table2 = _select(scored, table2_fixed)
    encoded, reduction, pca = (c.check(table1, metric) for c in TABLE1_COMPARISONS)
    return [
        encoded,
        reduction,
        smaller_dimension(table1, metric),
        pca,
        *(c.check(table2, metric) for c in TABLE2_COMPARISONS),
        batch_trend(table2, metric),
        smallest_batch_best(table2, metric),
        expression_choice(frame),
    ]


def findings_markdown(findings: Sequence[Finding], frame: pd.DataFrame) -> str:
    """``findings.md``: one row per claim, then how the numbers were made."""
    seeds = sorted(set(frame["seed"]))
    rows = [
        {
            "Claim (paper)": f.claim,
            "Compared": f.comparison,
            "Ours: A - B in points (A, B: mean ± sd over seeds)": f.difference,
            "Test": f.test,
            "p": "—" if f.p_value is None else f"{f.p_value:.3g}",
            "Verdict": f.verdict,
        }
        for f in findings
    ]
    table = pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
    return (
        "# The paper's claims, checked on our runs\n\n"
        f"Seeds: {', '.join(map(str, seeds))}. Metric: instance IoU in percent, mean over the "
        f"splits {', '.join(test_splits(frame))} (first expression per referent) unless the "
        f"claim says otherwise. Level {ALPHA}: a verdict is `{AGREES}` or `{DISAGREES}` when "
        f"the test rejects in that direction, `{UNRESOLVED}` otherwise (at this number of "
        "seeds). Method: rsis/findings.py.\n\n"
        f"{table}\n"
    )


def write_findings(paths: Sequence[Path], grid: Mapping, out: Path) -> list[Finding]:
    """Check every claim on the metrics files ``paths`` and write ``findings.md``."""
    records = read_result_records(paths)
    frame = metrics_frame(records)
    table1, table2 = grid_tables(grid)
    findings = check_claims(frame, table1.fixed, table2.fixed)
    with atomic_path(out) as tmp:
        tmp.write_text(findings_markdown(findings, frame))
    return findings


def _findings_command(args: argparse.Namespace) -> None:
    write_findings(args.metrics, parse_grid(args.grid), args.out)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis findings``."""
    parser = add_command(subparsers, "findings")
    parser.add_argument(
        "--metrics", nargs="+", required=True, type=Path, help="metrics .json files"
    )
    parser.add_argument(
        "--grid", required=True, help="config.yaml's `grid` as JSON, or a config file (config.yaml)"
    )
    parser.add_argument("--out", required=True, type=output_file, help="findings.md to write")
    parser.set_defaults(func=_findings_command)
