"""Instance and overall IoU per demo expression type (attribute, extreme, relation), per run.

Reads the ``expression_type`` breakdown that ``rsis evaluate`` writes into every metrics file
of the generated demo (``rsis.breakdowns``) and summarises it over seeds like the paper's
tables: ``mean ± sd`` in percent, with the number of referents of that type per split. Real
datasets have no such breakdown; their file says so in one line.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rsis.cli import add_command
from rsis.data.cache import EXPRESSIONS
from rsis.data.demo.grammar import TEMPLATES
from rsis.io import atomic_path
from rsis.metrics import read_result_records
from rsis.runs import RunSpec
from rsis.tables import METRICS, MISSING, SPLITS, mean_sd_cell, over_seeds, run_seed

log = logging.getLogger(__name__)

BREAKDOWN = "expression_type"


def expression_type_table(records: Sequence[tuple[Path, dict]], expression: str) -> pd.DataFrame:
    """One row per run and expression type: per metric and split ``_mean``, ``_sd`` (NaN
    below two seeds), ``_n`` (seeds) in percent, and ``referents_<split>`` of that type.

    Args:
        records: ``(path, metrics record)`` pairs as ``read_result_records`` gives them (one
            per run, seed, split and expression).
        expression: the metrics files to read (``first``, ``random`` or ``all``).
    """
    values: dict[tuple[str, str, str], dict[int, dict]] = {}
    for path, record in records:
        types = record.get("breakdowns", {}).get(BREAKDOWN)
        if not types or record["expression"] != expression or record["split"] not in SPLITS:
            continue
        run = RunSpec.from_dict(record["run"]).id
        seed = run_seed(record, path)
        for kind, metrics in types.items():
            values.setdefault((run, kind, record["split"]), {})[seed] = metrics
    pairs = sorted(
        {(run, kind) for run, kind, _ in values},
        key=lambda pair: (pair[0], TEMPLATES.index(pair[1])),  # the generator's type order
    )
    rows = []
    for run, kind in pairs:
        row: dict[str, object] = {"run": run, "expression_type": kind}
        for split in SPLITS:
            by_seed = values.get((run, kind, split), {})
            for metric in METRICS:
                stats = over_seeds([100.0 * m[metric] for m in by_seed.values()])
                row[f"{metric}_{split}_mean"], row[f"{metric}_{split}_sd"] = stats[:2]
                row[f"{metric}_{split}_n"] = stats[2]
            counts = {m["n_referents"] for m in by_seed.values()}
            row[f"referents_{split}"] = counts.pop() if len(counts) == 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def expression_type_markdown(table: pd.DataFrame, expression: str) -> str:
    """The table as Markdown under a heading that says what the cells are."""
    title = "# Results per expression type\n\n"
    if table.empty:
        return (
            f"{title}No metrics file has an expression-type breakdown (the generated demo only).\n"
        )
    shown = pd.DataFrame({"Run": table["run"], "Expression type": table["expression_type"]})
    for metric, name in METRICS.items():
        for split in SPLITS:
            shown[f"{name} {split}"] = [
                mean_sd_cell(m, s)
                for m, s in zip(
                    table[f"{metric}_{split}_mean"], table[f"{metric}_{split}_sd"], strict=True
                )
            ]
    shown[f"Referents {' / '.join(SPLITS)}"] = [
        " / ".join(MISSING if np.isnan(n) else str(int(n)) for n in counts)
        for counts in zip(*(table[f"referents_{split}"] for split in SPLITS), strict=True)
    ]
    text = (
        "IoU in percent of the referents whose expression has that type (the demo's templates: "
        '"the small red circle" attribute, "the leftmost star" extreme, "blue square left of '
        f'the red circle" relation), {expression} expression per referent; each cell mean ± sd '
        "over the seeds (the mean alone for one seed); — = no such referent."
    )
    return f"{title}{text}\n\n{shown.to_markdown(index=False, disable_numparse=True)}\n"


def _types_command(args: argparse.Namespace) -> None:
    """``rsis types``."""
    records = read_result_records(args.metrics)
    table = expression_type_table(records, args.expression)
    with atomic_path(args.out_dir / "expression_types.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(args.out_dir / "expression_types.md") as tmp:
        tmp.write_text(expression_type_markdown(table, args.expression))
    log.info("wrote %d rows to %s", len(table), args.out_dir / "expression_types.md")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis types``."""
    parser = add_command(subparsers, "types")
    parser.add_argument(
        "--metrics", nargs="+", required=True, type=Path, help="metrics .json files"
    )
    parser.add_argument(
        "--expression",
        default="first",
        choices=EXPRESSIONS,
        help="whose metrics files to read: first, random or all (as rsis evaluate wrote them)",
    )
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for the tables")
    parser.set_defaults(func=_types_command)
