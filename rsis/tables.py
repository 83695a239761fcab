"""The paper's Table 1 and Table 2 with our numbers beside the paper's, plus the expression check.

Input: metrics files written by evaluation (``rsis.metrics.write_metrics_json``, one per run,
split and expression). Output: ``table1`` and ``table2`` as Markdown, CSV, LaTeX and HTML,
``expression_check.md`` (first vs random expression) and ``summary.html`` (each table's best
row beside the paper's best). Markdown, LaTeX and HTML cells read ``mean ± sd (paper)`` in
percent, over the seeds each run was trained with; the CSV has separate numeric
``..._mean``, ``..._sd``, ``..._n`` (seeds) and ``..._paper`` columns. A missing value is "—"
(empty in the CSV), never zero.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from rsis.cli import add_command
from rsis.errors import UserError
from rsis.fields import field_value
from rsis.io import read_user_text, write_texts
from rsis.metrics import read_result_records
from rsis.runs import GridTable, RunSpec, grid_tables

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("val", "testA", "testB")
METRICS: dict[str, str] = {"instance_iou": "Instance IoU", "overall_iou": "Overall IoU"}
MISSING = "—"
LABELS: dict[str, dict[object, str]] = {
    "embedding": {"pooled": "Pooled output", "mean": "Encoded layers"},
    "transform": {
        "none": "None",
        "pca": "PCA",
        "linear": "Linear",
        "linear_pca": "Linear (PCA init)",
    },
    "order": {"area": "Sorted by size", "random": "Random", "dataset": "RefCOCO"},
    "decoder": {"paper": "RRIS (paper)", "coord": "RRIS + x, y channels (ours)"},
}
COLUMN_TITLES: dict[str, str] = {
    "embedding": "BERT embedding",
    "transform": "Transform",
    "dim": "Dim",
    "order": "Referent order",
    "batch_size": "Batch size",
    "decoder": "Decoder",
}
TITLES: dict[str, str] = {
    "table1": "Table 1: results for different text embedding configurations",
    "table2": "Table 2: results for different referent orders and batch sizes",
}
EMBEDDING_PHRASES: dict[str, str] = {
    "pooled": "pooled output",
    "mean": "encoded layers (mean of the last hidden layer)",
}
TRANSFORM_PHRASES: dict[str, str] = {
    "none": "at the text model's native size",
    "pca": "reduced with PCA to {dim}",
    "linear": "projected by a learned linear layer to {dim}",
    "linear_pca": "projected by a linear layer started at PCA to {dim}",
}


def setting_text(fixed: dict[str, object]) -> str:
    """What every row of a table shares, in words (for its caption)."""
    if "order" in fixed:
        return f"referents in {fixed['order']} order, batch size {fixed['batch_size']}"
    transform = TRANSFORM_PHRASES[str(fixed["transform"])].format(dim=fixed["dim"])
    return f"{EMBEDDING_PHRASES[str(fixed['embedding'])]} {transform}"


def load_paper_results() -> dict:
    """The paper's numbers (``rsis/paper_results.yaml``), in percent; None where missing."""
    return yaml.safe_load(resources.files("rsis").joinpath("paper_results.yaml").read_text())


def _paper_values(table: GridTable, paper: dict) -> dict[tuple, float | None]:
    """Map (row key, metric, split) to the paper's value, for the rows the grid has."""
    values = {}
    for entry in paper[table.name]:
        key = table.row_key(RunSpec.from_dict({**table.fixed, **entry}))
        if key is None:  # the configured grid leaves this paper row out
            continue
        for metric in METRICS:
            for split in SPLITS:
                values[(key, metric, split)] = entry[metric][split]
    return values


def run_seed(record: dict, path: Path) -> int:
    """The seed a metrics file's run was trained with."""
    return field_value(
        record["run"],
        "seed",
        int,
        str(path),
        "rerun rsis evaluate with this version",
        label="run.seed",
    )


def _our_values(
    table: GridTable, records: Sequence[tuple[Path, dict]], expression: str
) -> dict[tuple, dict[int, tuple[float, Path]]]:
    """Map (row key, metric, split) to {seed: (our value in percent, source file)}, one
    expression."""
    values: dict[tuple, dict[int, tuple[float, Path]]] = {}
    for path, record in records:
        key = table.row_key(RunSpec.from_dict(record["run"]))
        if key is None or record["expression"] != expression or record["split"] not in SPLITS:
            continue
        seed = run_seed(record, path)
        for metric in METRICS:
            cell = values.setdefault((key, metric, record["split"]), {})
            if seed in cell:
                raise UserError(
                    f"{cell[seed][1]} and {path} both hold {table.name} row {key}, split "
                    f"{record['split']}, seed {seed}: pass one metrics file per run, seed "
                    "and split"
                )
            cell[seed] = (100.0 * record["metrics"][metric], path)
    return values


def over_seeds(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN below two values) and count of one cell's seeds;
    the mean is NaN when there is none."""
    mean = float(np.mean(values)) if len(values) else np.nan
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else np.nan
    return mean, sd, len(values)


def numeric_table(
    table: GridTable,
    records: Sequence[tuple[Path, dict]],
    paper: dict,
    expression: str = "first",
) -> pd.DataFrame:
    """One row per grid run: label columns, then per metric and split our ``_mean``, ``_sd``
    (sample standard deviation over seeds; NaN below two seeds) and ``_n`` (seeds), and the
    ``_paper`` value (NaN = missing).

    ``expression``: whose metrics files fill our cells (``first``, or ``all`` sentences).
    """
    ours = _our_values(table, records, expression)
    theirs = _paper_values(table, paper)
    rows = []
    for run in table.runs:
        key = table.row_key(run)
        row: dict[str, object] = dict(zip(table.fields, key, strict=True))
        for metric in METRICS:
            for split in SPLITS:
                seeds = [value for value, _ in ours.get((key, metric, split), {}).values()]
                mean, sd, count = over_seeds(seeds)
                row[f"{metric}_{split}_mean"], row[f"{metric}_{split}_sd"] = mean, sd
                row[f"{metric}_{split}_n"] = count
                row[f"{metric}_{split}_paper"] = theirs.get((key, metric, split))
        rows.append(row)
    numbers = ("_mean", "_sd", "_paper")
    return pd.DataFrame(rows).astype({c: float for c in rows[0] if c.endswith(numbers)})


def _number(value: float) -> str:
    return MISSING if pd.isna(value) else f"{value:.2f}"


def mean_sd_cell(mean: float, sd: float, seeds: int | None = None) -> str:
    """``mean ± sd`` over seeds (just the mean for one seed), then `` (n=<seeds>)`` when
    ``seeds`` is given: the one spelling of a spread in tables, findings and reproduce."""
    cell = _number(mean) if pd.isna(sd) else f"{mean:.2f} ± {sd:.2f}"
    return cell if seeds is None else f"{cell} (n={seeds})"


def display_table(numbers: pd.DataFrame, table: GridTable) -> pd.DataFrame:
    """Readable labels and ``mean ± sd (paper)`` cells."""
    shown = pd.DataFrame(
        {
            COLUMN_TITLES[field]: [LABELS.get(field, {}).get(v, str(v)) for v in numbers[field]]
            for field in table.fields
        }
    )
    for metric, title in METRICS.items():
        for split in SPLITS:
            means, sds = numbers[f"{metric}_{split}_mean"], numbers[f"{metric}_{split}_sd"]
            ours = pd.Series([mean_sd_cell(m, s) for m, s in zip(means, sds, strict=True)])
            paper = numbers[f"{metric}_{split}_paper"].map(_number)
            shown[f"{title} {split}"] = ours + " (" + paper + ")"
    return shown


def _distinct(records: Sequence[tuple[Path, dict]], get) -> str:
    values = sorted({str(get(record)) for _, record in records})
    return ", ".join(values) if values else MISSING


def caption(
    table: GridTable,
    records: Sequence[tuple[Path, dict]],
    dataset_label: str,
    expression: str = "first",
) -> str:
    """Caption naming dataset, text model, backbone, image size, protocol and conventions."""
    used = [
        (p, r)
        for p, r in records
        if table.row_key(RunSpec.from_dict(r["run"])) and r["expression"] == expression
    ]
    sentences = {"first": "first expression per referent", "all": "every sentence scored"}
    native = [(p, r) for p, r in used if r["run"]["transform"] == "none"]
    native_dim = (
        f", native text dim {_distinct(native, lambda r: r['run'].get('text_dim'))}"
        if "dim" in table.fields
        else ""
    )
    return (
        f"{TITLES[table.name]} on {dataset_label} ({setting_text(table.fixed)}; "
        f"{sentences.get(expression, expression + ' expression')}). "
        f"Each cell: ours as mean ± sd over seeds {_distinct(used, lambda r: r['run']['seed'])} "
        "(the mean alone for one seed), then (paper); IoU in percent; — = not available. "
        "Instance IoU = mean over referents of intersection/union (mIoU); "
        "Overall IoU = sum of intersections / sum of unions over all referents (oIoU). "
        f"Ours: text model {_distinct(used, lambda r: r['text_model'])}, "
        f"backbone {_distinct(used, lambda r: r['backbone'])}, "
        f"image size {_distinct(used, lambda r: 'x'.join(map(str, r['image_size'])))}, "
        f"scored at {_distinct(used, lambda r: r['conventions'].get('resolution'))}"
        f"{native_dim}, protocol {_distinct(used, lambda r: r['protocol'])} "
        f"({_distinct(used, lambda r: r['conventions'].get('empty_union'))}; "
        f"{_distinct(used, lambda r: r['conventions'].get('precision'))}). "
        "Paper: RefCOCO (UNC), bert-base-cased (native dim 768), ResNet-101, 240x427."
    )


def _latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#"}
    replacements |= {"_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}"}
    return "".join(replacements.get(char, char) for char in text)


HTML_STYLE = (
    "body{font-family:sans-serif;margin:1em;color:#222}"
    "table{border-collapse:collapse;font-size:14px}"
    "th,td{border:1px solid #bbb;padding:4px 8px}td{text-align:right}"
    "th{background:#eef;text-align:center}td:nth-child(-n+%d){text-align:left}"
    "p{max-width:60em;font-size:13px}"
)


def html_page(title: str, text: str, shown: pd.DataFrame, label_columns: int) -> str:
    """A self-contained HTML page: the table (``label_columns`` left-aligned), its caption."""
    table = shown.to_html(index=False, border=0, escape=True)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{HTML_STYLE % label_columns}</style></head><body><h2>{escape(title)}</h2>"
        f"{table}<p>{escape(text)}</p></body></html>\n"
    )


def headline_row(table: GridTable, numbers: pd.DataFrame) -> dict[str, str]:
    """A table's best row on val by our instance IoU, beside the paper's best row."""
    labels = display_table(numbers, table)[[COLUMN_TITLES[f] for f in table.fields]]
    labels = labels.astype(str).agg(", ".join, axis=1)
    ours, paper = numbers["instance_iou_val_mean"], numbers["instance_iou_val_paper"]
    row = {"Table": TITLES[table.name].split(":")[0]}
    for who, values in (("Our", ours), ("The paper's", paper)):
        best = values.idxmax() if values.notna().any() else None
        row[f"{who} best row"] = MISSING if best is None else labels[best]
        cell = MISSING if best is None else f"{_number(ours[best])} ({_number(paper[best])})"
        row[f"{who} best: instance IoU val, ours (paper)"] = cell
    return row


def table_files(
    table: GridTable,
    records: Sequence[tuple[Path, dict]],
    paper: dict,
    dataset_label: str,
    expression: str = "first",
) -> tuple[dict[str, str], dict[str, str]]:
    """The text of ``<name>.md``, ``.csv``, ``.tex`` and ``.html`` by file name, and the
    table's ``headline_row``."""
    numbers = numeric_table(table, records, paper, expression)
    shown = display_table(numbers, table)
    text = caption(table, records, dataset_label, expression)
    markdown = shown.to_markdown(index=False, disable_numparse=True)
    latex = shown.to_latex(
        index=False,
        caption=_latex_escape(text),
        label=f"tab:{table.name}",
        column_format="l" * len(table.fields) + "r" * (shown.shape[1] - len(table.fields)),
    )
    files = {
        "md": f"{text}\n\n{markdown}\n",
        "csv": numbers.to_csv(index=False, float_format="%.2f"),
        "tex": latex,
        "html": html_page(TITLES[table.name], text, shown, len(table.fields)),
    }
    named = {f"{table.name}.{suffix}": content for suffix, content in files.items()}
    return named, headline_row(table, numbers)


def _run_label(record: dict, path: Path) -> str:
    return f"{RunSpec.from_dict(record['run']).id} seed {run_seed(record, path)}"


def _split_rank(split: str) -> tuple[int, str]:
    """Sort key: the paper's splits in paper order, then any other split by name."""
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def expression_check(records: Sequence[tuple[Path, dict]]) -> str:
    """Markdown: first vs random expression, per run and split (the paper claims < 1 point)."""
    by_expression: dict[str, dict[tuple[str, str], tuple[dict, Path]]] = {"first": {}, "random": {}}
    for path, record in records:
        found = by_expression.get(record["expression"])
        if found is None:
            continue
        key = (_run_label(record, path), record["split"])
        if key in found:
            raise UserError(
                f"{found[key][1]} and {path} both hold run {key[0]}, split {key[1]}, "
                f"{record['expression']} expression: pass only one of them"
            )
        found[key] = (record["metrics"], path)
    pairs = sorted(
        set(by_expression["first"]) & set(by_expression["random"]),
        key=lambda pair: (pair[0], *_split_rank(pair[1])),
    )
    header = (
        "Expression check: first vs random expression per referent, IoU in percent; "
        "the paper reports a variation below 1 (overall IoU, on average)."
    )
    if not pairs:
        return f"{header}\n\nNo run was evaluated with both expressions.\n"
    rows = []
    for run, split in pairs:
        row: dict[str, str] = {"Run": run, "Split": split}
        for metric, title in METRICS.items():
            first = 100.0 * by_expression["first"][(run, split)][0][metric]
            random = 100.0 * by_expression["random"][(run, split)][0][metric]
            row |= {f"{title} first": f"{first:.2f}", f"{title} random": f"{random:.2f}"}
            row[f"{title} diff"] = f"{random - first:+.2f}"
        rows.append(row)
    table = pd.DataFrame(rows)
    mean_abs = table["Overall IoU diff"].astype(float).abs().mean()
    return (
        f"{header}\n\n{table.to_markdown(index=False, disable_numparse=True)}\n\n"
        f"Mean absolute overall IoU difference: {mean_abs:.2f} points over {len(pairs)} "
        "(run and seed, split) pairs.\n"
    )


def metrics_frame(records: Sequence[tuple[Path, dict]]) -> pd.DataFrame:
    """One row per metrics file: the run's coordinates and seed, split, expression, and the
    metrics of ``METRICS`` in percent (the findings check reads this)."""
    rows = []
    for path, record in records:
        run = RunSpec.from_dict(record["run"]).to_dict()
        row = run | {"seed": run_seed(record, path), "split": record["split"]}
        row |= {"expression": record["expression"]}
        rows.append(row | {metric: 100.0 * record["metrics"][metric] for metric in METRICS})
    return pd.DataFrame(rows)


def write_tables(
    paths: Iterable[Path],
    out_dir: Path,
    dataset_label: str,
    grid: Mapping,
    expression: str = "first",
) -> None:
    """Read metrics files and write every table and ``expression_check.md`` into ``out_dir``.

    Args:
        paths: metrics files (``rsis evaluate``).
        out_dir: folder for the tables.
        dataset_label: dataset name for the captions.
        grid: ``config.yaml: grid``: one table row per run of each table.
        expression: the metrics files that fill the tables (``first``, or ``all``).
    """
    records = read_result_records(paths)
    paper = load_paper_results()
    tables = grid_tables(grid)
    unused = [
        str(path)
        for path, record in records
        if not any(table.row_key(RunSpec.from_dict(record["run"])) for table in tables)
    ]
    if unused:
        log.warning("metrics files that fit no table row: %s", ", ".join(unused))
    files: dict[str, str] = {}
    headlines = []
    for table in tables:
        texts, headline = table_files(table, records, paper, dataset_label, expression)
        files |= texts
        headlines.append(headline)
    scored = {"first": "first expression", "all": "every sentence"}.get(expression, expression)
    text = (
        f"{dataset_label}: the best configuration of each table by our instance IoU on val "
        f"(mean over samples of intersection/union, percent, {scored}), beside the "
        "paper's best; each cell reads ours (paper); — = not available."
    )
    files["summary.html"] = html_page("Headline", text, pd.DataFrame(headlines), 2)
    files["expression_check.md"] = expression_check(records)
    write_texts({out_dir / name: content for name, content in files.items()})


# The keys of config.yaml's grid that the tables read (workflow/schemas/config.schema.yaml).
GRID_KEYS: dict[str, tuple[str, ...]] = {
    "table1": ("embeddings", "transforms", "dims", "order", "batch_size"),
    "table2": ("embedding", "transform", "dim", "runs"),
}
GRID_RUN_KEYS = ("order", "batch_size")  # of each grid.table2.runs entry


def _require_keys(value: object, keys: Sequence[str], where: str) -> None:
    """Refuse a grid block that is not a mapping or lacks one of ``keys``, naming it."""
    if not isinstance(value, dict):
        raise UserError(
            f"--grid: grid.{where} must be a mapping with {', '.join(keys)}, got {value!r}"
        )
    missing = [key for key in keys if key not in value]
    if missing:
        raise UserError(
            f"--grid: grid.{where} lacks {', '.join(missing)}: pass config.yaml's whole "
            "`grid` as JSON"
        )


GRID_SOURCE = "--grid config.yaml, whose `grid` lays out the tables"
GRID_HELP = f"give {GRID_SOURCE}, or the grid as JSON text"


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parser's complaint on one line: what and where."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(error, 'problem', None) or error}{where}"


def parse_grid(text: str) -> dict:
    """``--grid``: the grid as JSON (or YAML) text, or a YAML file such as config.yaml (its
    ``grid``), with every key the tables read."""
    source = Path(text) if text.endswith((".yaml", ".yml", ".json")) else None
    try:
        grid = yaml.safe_load(
            read_user_text(source, GRID_SOURCE, "a YAML file") if source else text
        )
    except yaml.YAMLError as error:
        where = f"{source} is" if source else "--grid is"
        raise UserError(
            f"{where} not JSON or YAML ({_yaml_problem(error)}); {GRID_HELP}"
        ) from error
    if source and isinstance(grid, dict) and "grid" in grid:
        grid = grid["grid"]
    if not isinstance(grid, dict) or not {"table1", "table2"} <= set(grid):
        raise UserError("--grid must be config.yaml's `grid` mapping, with table1 and table2")
    for table, keys in GRID_KEYS.items():
        _require_keys(grid[table], keys, table)
    runs = grid["table2"]["runs"]
    if not isinstance(runs, list):
        raise UserError(f"--grid: grid.table2.runs must be a list of runs, got {runs!r}")
    for number, run in enumerate(runs):
        _require_keys(run, GRID_RUN_KEYS, f"table2.runs[{number}]")
    return grid


def _tables_command(args: argparse.Namespace) -> None:
    """``rsis tables``."""
    write_tables(
        args.metrics, Path(args.out_dir), args.dataset_label, parse_grid(args.grid), args.expression
    )
    log.info("wrote tables to %s", args.out_dir)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis tables``."""
    parser = add_command(subparsers, "tables")
    parser.add_argument(
        "--metrics", nargs="+", required=True, type=Path, help="metrics .json files"
    )
    parser.add_argument(
        "--grid",
        required=True,
        help="config.yaml's `grid` as JSON, or a config file (config.yaml): the tables get "
        "one row per run of it",
    )
    parser.add_argument(
        "--out-dir",
        required=True,
        help="folder for table1/table2 .md/.csv/.tex/.html, expression_check.md and summary.html",
    )
    parser.add_argument(
        "--dataset-label", required=True, help="dataset name for captions, e.g. 'RefCOCO (UNC)'"
    )
    parser.add_argument(
        "--expression",
        default="first",
        choices=("first", "all"),
        help="whose metrics fill the tables: first (the paper's; the default) or all "
        "(every sentence)",
    )
    parser.set_defaults(func=_tables_command)
