"""Tables 1 and 2 and the expression check, from a fixture of metrics files."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rsis.cli import main
from rsis.errors import UserError
from rsis.metrics import CONVENTIONS, write_metrics_json
from rsis.runs import RunSpec, expand_grid, grid_tables
from rsis.tables import load_paper_results, parse_grid, register, write_tables

GRID = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())["grid"]

BEST = {"embedding": "mean", "transform": "pca", "dim": 64, "order": "random", "batch_size": 32}
BEST["seed"] = 0
FIXTURE = [  # (run, split, expression, instance IoU, overall IoU)
    (BEST, "val", "first", 0.41234, 0.38512),
    (BEST, "testA", "first", 0.47, 0.42),
    (BEST, "val", "random", 0.41013, 0.37904),
    ({**BEST, "order": "area", "batch_size": 128}, "val", "first", 0.25124, 0.22337),
    (
        {**BEST, "embedding": "pooled", "transform": "none", "dim": "native", "text_dim": 384},
        "val",
        "first",
        0.26551,
        0.2401,
    ),
    ({**BEST, "transform": "linear_pca"}, "testB", "first", 0.3999, 0.3512),
    ({**BEST, "order": "dataset", "batch_size": 16}, "val", "first", 0.5, 0.5),  # fits no row
]


def write_fixture(folder, entries=FIXTURE):
    paths = []
    for i, (run, split, expression, instance, overall) in enumerate(entries):
        metrics = {"overall_iou": overall, "instance_iou": instance, "n_referents": 10}
        metrics["n_samples"] = 10
        metrics |= {f"prec@{x}": 0.5 for x in (0.5, 0.6, 0.7, 0.8, 0.9)}
        conventions = {**CONVENTIONS, "resolution": "240x427", "threshold": "logit > 0"}
        paths.append(folder / f"{i}_{split}~{expression}.json")
        write_metrics_json(
            paths[-1],
            {"protocol": "rsis", "metrics": metrics, "conventions": conventions},
            run=run,
            split=split,
            expression=expression,
            dataset="refcoco",
            text_model="all-MiniLM-L6-v2",
            backbone="resnet101",
            image_size=(240, 427),
        )
    return paths


TABLE2_MD = """\
Table 2: results for different referent orders and batch sizes on RefCOCO sample (encoded \
layers (mean of the last hidden layer) reduced with PCA to 64; first expression per referent). \
Each cell: ours as mean ± sd over seeds 0 (the mean alone for one seed), then (paper); IoU in \
percent; — = not available. Instance IoU = mean over referents of intersection/union (mIoU); Overall IoU = sum of intersections / sum of unions over all \
referents (oIoU). Ours: text model all-MiniLM-L6-v2, backbone resnet101, image size 240x427, \
scored at 240x427, protocol rsis (a sample with empty prediction and empty ground truth scores \
IoU 1; prec@X: share of samples with IoU >= X, X in 0.5, 0.6, 0.7, 0.8, 0.9). Paper: RefCOCO \
(UNC), bert-base-cased (native dim 768), ResNet-101, 240x427.

| Referent order   | Batch size   | Instance IoU val   | Instance IoU testA   | Instance IoU testB   | Overall IoU val   | Overall IoU testA   | Overall IoU testB   |
|:-----------------|:-------------|:-------------------|:---------------------|:---------------------|:------------------|:--------------------|:--------------------|
| Sorted by size   | 128          | 25.12 (26.08)      | — (29.63)            | — (22.81)            | 22.34 (23.67)     | — (26.47)           | — (21.13)           |
| Sorted by size   | 32           | — (26.12)          | — (28.66)            | — (23.82)            | — (23.88)         | — (25.81)           | — (22.23)           |
| Random           | 128          | — (27.54)          | — (31.45)            | — (24.39)            | — (24.75)         | — (27.76)           | — (22.26)           |
| Random           | 64           | — (33.17)          | — (37.42)            | — (30.51)            | — (29.52)         | — (32.77)           | — (27.03)           |
| Random           | 32           | 41.23 (39.79)      | 47.00 (45.31)        | — (34.04)            | 38.51 (35.70)     | 42.00 (40.28)       | — (31.28)           |
| Random           | 16           | — (42.66)          | — (47.48)            | — (37.51)            | — (36.95)         | — (41.42)           | — (32.72)           |
| RefCOCO          | 128          | — (31.84)          | — (35.84)            | — (28.69)            | — (27.67)         | — (30.93)           | — (25.37)           |
"""  # noqa: E501

TABLE1_ROWS = """\
| Pooled output    | None              | native | 26.55 (25.57)      | — (30.30)            | — (21.92)            | 24.01 (23.23)     | — (26.85)           | — (20.38)           |
| Encoded layers   | None              | native | — (26.86)          | — (31.32)            | — (23.04)            | — (24.51)         | — (27.85)           | — (—)               |
| Encoded layers   | PCA               | 64     | 41.23 (39.79)      | 47.00 (45.31)        | — (34.04)            | 38.51 (35.70)     | 42.00 (40.28)       | — (31.28)           |
| Encoded layers   | Linear (PCA init) | 64     | — (—)              | — (—)                | 39.99 (—)            | — (—)             | — (—)               | 35.12 (—)           |
"""  # noqa: E501

EXPRESSION_CHECK_MD = """\
Expression check: first vs random expression per referent, IoU in percent; the paper reports \
a variation below 1 (overall IoU, on average).

| Run                            | Split   | Instance IoU first   | Instance IoU random   | Instance IoU diff   | Overall IoU first   | Overall IoU random   | Overall IoU diff   |
|:-------------------------------|:--------|:---------------------|:----------------------|:--------------------|:--------------------|:---------------------|:-------------------|
| mean-pca-64-random-bs32 seed 0 | val     | 41.23                | 41.01                 | -0.22               | 38.51               | 37.90                | -0.61              |

Mean absolute overall IoU difference: 0.61 points over 1 (run and seed, split) pairs.
"""  # noqa: E501


def run_tables(paths, out, grid=GRID):
    """Run ``rsis tables`` through its own parser."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    command = ["tables", "--metrics", *map(str, paths), "--grid", json.dumps(grid)]
    command += ["--out-dir", str(out), "--dataset-label", "RefCOCO sample"]
    args = parser.parse_args(command)
    args.func(args)
    return out


@pytest.fixture()
def tables(tmp_path):
    """``rsis tables`` on the fixture, with the configured grid."""
    return run_tables(write_fixture(tmp_path), tmp_path / "tables")


def test_table2_markdown_is_exact(tables):
    assert (tables / "table2.md").read_text() == TABLE2_MD


def test_table1_rows_caption_and_missing_paper_value(tables):
    text = (tables / "table1.md").read_text()
    lines = text.splitlines()
    assert len(lines) == 2 + 2 + 11  # caption, blank, header, rule, 10 paper rows + ours
    for row in TABLE1_ROWS.splitlines():
        assert row in lines
    assert "native text dim 384" in lines[0]


def test_csv_keeps_numbers_and_leaves_missing_empty(tables):
    table = pd.read_csv(tables / "table1.csv")
    assert list(table.columns[:3]) == ["embedding", "transform", "dim"]
    assert len(table) == 11
    best = table[
        (table["embedding"] == "mean") & (table["transform"] == "pca") & (table["dim"] == "64")
    ]
    assert best["instance_iou_val_mean"].tolist() == [41.23]
    assert best["instance_iou_val_paper"].tolist() == [39.79]
    assert best["instance_iou_testB_mean"].isna().all()
    missing_in_paper = table[(table["embedding"] == "mean") & (table["transform"] == "none")]
    assert missing_in_paper["overall_iou_testB_paper"].isna().all()
    assert missing_in_paper["overall_iou_testA_paper"].tolist() == [27.85]


def test_latex_has_caption_label_and_rows(tables):
    tex = (tables / "table2.tex").read_text()
    assert "\\caption{Table 2: results" in tex
    assert "\\label{tab:table2}" in tex
    assert "Random & 32 & 41.23 (39.79) & 47.00 (45.31) & — (34.04)" in tex
    assert "\\begin{tabular}{llrrrrrr}" in tex


def test_html_is_a_table_with_its_caption(tables):
    page = (tables / "table2.html").read_text()
    rows = [
        re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in re.findall(r"<tr.*?</tr>", page, re.S)
    ]
    assert rows[0][:3] == ["Referent order", "Batch size", "Instance IoU val"]
    assert ["Random", "32", "41.23 (39.79)"] in [row[:3] for row in rows]
    assert len(rows) == 1 + 7  # header and the paper's seven rows
    assert "<h2>Table 2: results" in page and "Overall IoU = sum of intersections" in page
    summary = (tables / "summary.html").read_text()
    assert "<td>Random, 32</td>\n      <td>41.23 (39.79)</td>" in summary  # our best row


def test_expression_check(tables):
    assert (tables / "expression_check.md").read_text() == EXPRESSION_CHECK_MD


def test_paper_numbers_cover_every_paper_row():
    paper = load_paper_results()
    table1, table2 = grid_tables(GRID)
    keys = [table1.row_key(RunSpec.from_dict({**table1.fixed, **e})) for e in paper["table1"]]
    assert keys == [table1.row_key(run) for run in table1.runs[:10]]
    keys = [table2.row_key(RunSpec.from_dict({**table2.fixed, **e})) for e in paper["table2"]]
    assert keys == [table2.row_key(run) for run in table2.runs]
    values = [e[m][s] for e in paper["table1"] for m in ("instance_iou", "overall_iou")
              for s in ("val", "testA", "testB")]  # fmt: skip
    assert values.count(None) == 1  # Encoded layers / None / testB overall: not in the source


def test_two_files_for_one_cell_are_refused(tmp_path):
    paths = write_fixture(tmp_path, [FIXTURE[0], FIXTURE[0]])
    with pytest.raises(UserError, match=r"0_val~first.json and .*1_val~first.json both hold"):
        write_tables(paths, tmp_path / "out", "RefCOCO", GRID)
    assert not (tmp_path / "out" / "table1.md").exists()


def test_a_grid_change_shows_in_the_tables(tmp_path):
    """grid.table1.dims [32, 16]: Table 1 gets rows for 32 and 16 with our numbers and no paper
    number; the rows the grid dropped (128, 64) are gone."""
    grid = {**GRID, "table1": {**GRID["table1"], "dims": [32, 16]}}
    runs = expand_grid(grid)
    fixture = [
        (run.to_dict() | {"name": run_id, "seed": 0}, "val", "first", 0.25, 0.2)
        for run_id, run in runs.items()
    ]
    out = run_tables(write_fixture(tmp_path, fixture), tmp_path / "tables", grid)
    table = pd.read_csv(out / "table1.csv", dtype={"dim": str})
    assert list(table["dim"]) == ["native", "32", "16", "32", "16"] * 2 + ["64"]
    assert (table["instance_iou_val_mean"] == 25.0).all()
    learned = table[table["dim"].isin(["32", "16"])]
    assert learned["instance_iou_val_paper"].isna().all() and len(learned) == 8
    native = table[table["dim"] == "native"]
    assert native["instance_iou_val_paper"].tolist() == [25.57, 26.86]
    text = (out / "table1.md").read_text()
    assert "| Encoded layers   | PCA               | 32     | 25.00 (—)          |" in text
    assert "| 128 " not in text and "| 64     |" not in text.replace("Linear (PCA init) | 64", "")


def test_cells_over_seeds_show_mean_and_sd(tmp_path):
    """Two seeds of one run: the cell reads mean ± sd (sample sd), the CSV has mean, sd, n."""
    seeds = [
        ({**BEST, "seed": seed}, "val", "first", iou, iou) for seed, iou in ((0, 0.40), (1, 0.44))
    ]
    out = run_tables(write_fixture(tmp_path, seeds), tmp_path / "tables")
    table = pd.read_csv(out / "table2.csv")
    row = table[(table["order"] == "random") & (table["batch_size"] == 32)]
    assert row["instance_iou_val_mean"].tolist() == [42.0]
    assert row["instance_iou_val_sd"].tolist() == [2.83]  # sqrt(2 * 2^2 / 1) = 2.83
    assert row["instance_iou_val_n"].tolist() == [2]
    assert (
        "| Random           | 32           | 42.00 ± 2.83 (39.79)"
        in (out / "table2.md").read_text()
    )
    assert "mean ± sd over seeds 0, 1" in (out / "table2.md").read_text()


def test_a_grid_without_the_keys_the_tables_read_is_refused(tmp_path, capsys):
    paths = write_fixture(tmp_path, FIXTURE[:1])
    argv = ["tables", "--metrics", *map(str, paths), "--out-dir", str(tmp_path / "out")]
    argv += ["--dataset-label", "RefCOCO sample", "--grid"]
    table2_run = {**GRID, "table2": {**GRID["table2"], "runs": [{"order": "area"}]}}
    cases = [
        ({"table1": {}, "table2": {}}, "grid.table1 lacks embeddings, transforms, dims, order"),
        ({**GRID, "table2": {"runs": []}}, "grid.table2 lacks embedding, transform, dim:"),
        (table2_run, "grid.table2.runs[0] lacks batch_size:"),
    ]
    for grid, message in cases:
        assert main([*argv, json.dumps(grid)]) == 2
        error = capsys.readouterr().err
        assert f"rsis tables: error: --grid: {message}" in error, error
    assert not (tmp_path / "out").exists()


def test_a_reverse_order_or_second_file_of_one_cell_is_refused(tmp_path, capsys):
    """A glob such as eval/*/seed*/*.json also catches the inverse-order figure's files:
    the tables, the findings and the per-type results refuse them instead of averaging them
    in as another seed's cell."""
    (first,) = write_fixture(tmp_path, FIXTURE[:1])
    reverse = tmp_path / "val~first~reverse.json"
    record = json.loads(first.read_text())
    reverse.write_text(json.dumps({**record, "feed_order": "reverse"}))
    older = tmp_path / "older~first~reverse.json"  # written before files said their order
    older.write_text(json.dumps({k: v for k, v in record.items() if k != "feed_order"}))
    grid = ["--grid", json.dumps(GRID)]
    commands = {
        "tables": [*grid, "--out-dir", str(tmp_path / "t"), "--dataset-label", "x"],
        "findings": [*grid, "--out", str(tmp_path / "findings.md")],
        "types": ["--out-dir", str(tmp_path / "t")],
    }
    for command, rest in commands.items():
        assert main([command, "--metrics", str(first), str(reverse), *rest]) == 2
        assert f"{reverse}: the expressions were fed in reverse order" in capsys.readouterr().err
        assert main([command, "--metrics", str(first), str(older), *rest]) == 2
        error = capsys.readouterr().err
        assert f"{first} and {older} both hold run mean-pca-64-random-bs32, seed 0" in error
    assert not (tmp_path / "t").exists() and not (tmp_path / "findings.md").exists()


def test_grid_from_the_config_file_equals_the_grid_as_json():
    config = Path(__file__).resolve().parents[1] / "config.yaml"
    assert parse_grid(str(config)) == parse_grid(json.dumps(GRID)) == GRID
    with pytest.raises(UserError, match=r"^nowhere\.yaml: no such file; give --grid config\.yaml"):
        parse_grid("nowhere.yaml")
