"""``rsis reproduce``: a rerun's Table 1 and Table 2 cells against a reference block, cell by cell.

Both inputs are results blocks as ``rsis summary`` writes them (README.md, whose block is the
reference, or any run's ``results/<dataset>/summary.md``). Each ``mean ± sd`` cell of the
tables is compared two ways:

- the rule of issue 14: the rerun's mean within two of the reference's standard deviations
  plus half a point of the reference's mean;
- Welch's t-test of the two cells (means, sds and seed counts), two-sided: with three seeds a
  standard deviation is a rough estimate, and for two runs of one distribution the rule alone
  fails about 13% of cells by chance (BENCHMARKS.md, "Issue 14"), so the test is the sound
  verdict and the rule is reported beside it.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from scipy import stats

from rsis.cli import add_command, output_file
from rsis.errors import UserError
from rsis.io import atomic_path, read_user_text
from rsis.tables import mean_sd_cell

TABLES = ("Table 1", "Table 2")
RULE_SDS = 2.0
RULE_SLACK = 0.5  # points
CELL = re.compile(r"^(-?[\d.]+) ± ([\d.]+)")
SEEDS = re.compile(r"mean ± sd over seeds ((?:\d+, )*\d+)")


@dataclass(frozen=True)
class Cell:
    """One table cell of ours: mean and sample sd over ``seeds`` seeds."""

    mean: float
    sd: float
    seeds: int


def read_cells(path: Path) -> dict[tuple[str, str, str], Cell]:
    """Every ``mean ± sd`` cell of Table 1 and Table 2 in a results block, keyed by
    (table, row labels joined by " / ", column title)."""
    text = read_user_text(path, "README.md or a run's summary.md", "a Markdown file")
    cells: dict[tuple[str, str, str], Cell] = {}
    table, header, seeds = None, None, 0
    for line in text.splitlines():
        if line.startswith("#### "):
            table, header, seeds = line[5:].strip(), None, 0
            continue
        if table not in TABLES:
            continue
        if match := SEEDS.search(line):
            seeds = len(match[1].split(","))
        if not line.startswith("|"):
            continue
        parts = [part.strip() for part in line.strip().strip("|").split("|")]
        if header is None:
            header = parts
            continue
        if set("".join(parts)) <= set(":-"):
            continue
        if len(parts) != len(header):
            raise UserError(
                f"{path}: a row of {table} has {len(parts)} cells, its header {len(header)}: "
                "regenerate the block with rsis summary"
            )
        pairs = list(zip(header, parts, strict=True))
        row = " / ".join(part for title, part in pairs if "IoU" not in title)
        for title, part in pairs:
            if match := CELL.match(part):
                cells[(table, row, title)] = Cell(float(match[1]), float(match[2]), seeds)
    if not cells:
        raise UserError(
            f"{path}: no 'mean ± sd' cells under '#### Table 1' or '#### Table 2'; give a "
            "results block written by rsis summary (README.md or results/<dataset>/summary.md)"
        )
    return cells


def compare(reference: dict, rerun: dict, level: float = 0.05) -> pd.DataFrame:
    """One row per reference cell: both cells, the difference, the rule's and the test's
    verdicts. Every reference cell must be in ``rerun`` (UserError naming the first missing)."""
    missing = [key for key in reference if key not in rerun]
    if missing:
        table, row, column = missing[0]
        raise UserError(
            f"{len(missing)} cell(s) of the reference are not in the rerun, e.g. {table}, "
            f"row '{row}', column '{column}': compare runs of the same grid"
        )
    rows = []
    for (table, row, column), ref in reference.items():
        new = rerun[(table, row, column)]
        if min(ref.seeds, new.seeds) < 2:
            raise UserError(f"{table}, row '{row}': a cell over fewer than 2 seeds has no sd")
        test = stats.ttest_ind_from_stats(
            ref.mean, ref.sd, ref.seeds, new.mean, new.sd, new.seeds, equal_var=False
        )
        difference = new.mean - ref.mean
        rows.append(
            {
                "table": table,
                "row": row,
                "column": column,
                "reference": mean_sd_cell(ref.mean, ref.sd, ref.seeds),
                "rerun": mean_sd_cell(new.mean, new.sd, new.seeds),
                "difference": difference,
                "within_rule": abs(difference) <= RULE_SDS * ref.sd + RULE_SLACK,
                "welch_p": float(test.pvalue),
                "differs": bool(test.pvalue < level),
            }
        )
    return pd.DataFrame(rows)


def report(comparison: pd.DataFrame, level: float) -> str:
    """Markdown: the counts, then every cell that the rule or the test flags."""
    total = len(comparison)
    outside = int((~comparison["within_rule"]).sum())
    differs = int(comparison["differs"].sum())
    flagged = comparison[~comparison["within_rule"] | comparison["differs"]]
    lines = [
        f"{total} cells compared. Outside {RULE_SDS:g} reference sds + {RULE_SLACK:g} points: "
        f"{outside}. Welch's t-test p < {level:g}: {differs} (about {level * total:.1f} "
        "expected by chance alone).",
        "",
    ]
    if not flagged.empty:
        shown = flagged.assign(
            difference=flagged["difference"].map("{:+.2f}".format),
            welch_p=flagged["welch_p"].map("{:.3g}".format),
        )
        lines.append(shown.to_markdown(index=False, disable_numparse=True))
    return "\n".join(lines) + "\n"


def level_argument(text: str) -> float:
    """argparse type of ``--level``: a number strictly between 0 and 1."""
    try:
        level = float(text)
    except ValueError:
        level = float("nan")
    if not 0 < level < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a test level: give a number between 0 and 1 (exclusive), e.g. 0.05"
        )
    return level


def _reproduce_command(args: argparse.Namespace) -> None:
    comparison = compare(read_cells(args.reference), read_cells(args.rerun), args.level)
    text = report(comparison, args.level)
    print(text, end="")
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis reproduce``."""
    p = add_command(subparsers, "reproduce")
    p.add_argument("--reference", type=Path, required=True, help="e.g. README.md")
    p.add_argument("--rerun", type=Path, required=True, help="e.g. results/demo/summary.md")
    p.add_argument(
        "--level", type=level_argument, default=0.05, help="Welch test level, in (0, 1) (0.05)"
    )
    p.add_argument("--out", type=output_file, help="also write the report here (markdown)")
    p.set_defaults(func=_reproduce_command)
