"""``rsis types``: IoU per demo expression type over seeds, from hand-made metrics files."""

from __future__ import annotations

import argparse
import math

import pandas as pd
import pytest

from rsis.cli import main
from rsis.errors import UserError
from rsis.expression_types import register
from rsis.metrics import CONVENTIONS, write_metrics_json

RUN = {"embedding": "mean", "transform": "pca", "dim": 64, "order": "random", "batch_size": 16}


def _metrics(instance: float, overall: float, referents: int) -> dict:
    metrics = {"instance_iou": instance, "overall_iou": overall, "n_referents": referents}
    return (
        metrics | {"n_samples": referents} | {f"prec@{x}": 0.5 for x in (0.5, 0.6, 0.7, 0.8, 0.9)}
    )


def _write(
    folder, seed: int, split: str, types: dict[str, tuple[float, float, int]], expression="first"
):
    path = folder / f"seed{seed}_{split}~{expression}.json"
    breakdown = {kind: _metrics(*values) for kind, values in types.items()}
    summary = {
        "protocol": "rsis",
        "metrics": _metrics(0.5, 0.5, sum(v[2] for v in types.values())),
        "conventions": {**CONVENTIONS, "resolution": "48x84", "threshold": "logit > 0"},
        "breakdowns": {"expression_type": breakdown, "category": {}},
    }
    write_metrics_json(
        path,
        summary,
        run={**RUN, "seed": seed},
        split=split,
        expression=expression,
        dataset="demo",
        text_model="minilm",
        backbone="resnet18",
        image_size=(48, 84),
    )
    return path


def _run_types(paths, out_dir, expression="first") -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "types",
            "--metrics",
            *map(str, paths),
            "--out-dir",
            str(out_dir),
            "--expression",
            expression,
        ]
    )
    args.func(args)


def test_types_table_mean_sd_and_counts_over_seeds(tmp_path):
    paths = [
        _write(tmp_path, 0, "testA", {"attribute": (0.60, 0.70, 5), "relation": (0.20, 0.30, 3)}),
        _write(tmp_path, 1, "testA", {"attribute": (0.80, 0.90, 5), "relation": (0.40, 0.10, 3)}),
        _write(tmp_path, 0, "val", {"extreme": (0.5, 0.25, 4)}),
        _write(tmp_path, 0, "testA", {"attribute": (0.1, 0.1, 5)}, expression="random"),
    ]
    _run_types(paths, tmp_path)
    table = pd.read_csv(tmp_path / "expression_types.csv").set_index("expression_type")
    assert list(table.index) == ["attribute", "extreme", "relation"]  # the generator's order
    assert table.loc["attribute", "instance_iou_testA_mean"] == pytest.approx(70.0)
    assert table.loc["attribute", "instance_iou_testA_sd"] == pytest.approx(math.sqrt(200.0))
    assert table.loc["relation", "overall_iou_testA_mean"] == pytest.approx(20.0)
    assert table.loc["relation", "instance_iou_testA_n"] == 2
    assert table.loc["attribute", "referents_testA"] == 5
    assert table.loc["extreme", "instance_iou_val_mean"] == pytest.approx(50.0)
    assert math.isnan(table.loc["extreme", "instance_iou_val_sd"])  # one seed: no spread
    assert math.isnan(table.loc["extreme", "instance_iou_testA_mean"])  # no such referent
    text = (tmp_path / "expression_types.md").read_text()
    assert "| 70.00 ± 14.14" in text and "| 50.00 " in text and "— / 5 / —" in text


def test_types_without_breakdowns_say_so(tmp_path):
    path = _write(tmp_path, 0, "val", {})
    _run_types([path], tmp_path)
    assert (
        "No metrics file has an expression-type breakdown"
        in (tmp_path / "expression_types.md").read_text()
    )


def test_types_refuse_two_files_for_one_seed_and_split(tmp_path):
    first = _write(tmp_path, 0, "val", {"attribute": (0.5, 0.5, 2)})
    copy = tmp_path / "copy.json"
    copy.write_text(first.read_text())
    with pytest.raises(UserError, match="both hold run mean-pca-64-random-bs16, seed 0, split val"):
        _run_types([first, copy], tmp_path)


def test_types_refuse_an_expression_evaluate_does_not_write(tmp_path, capsys):
    path = _write(tmp_path, 0, "val", {"attribute": (0.5, 0.5, 2)})
    argv = ["types", "--metrics", str(path), "--out-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--expression", "bogus"])
    assert exit_.value.code == 2
    assert "argument --expression: invalid choice: 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
