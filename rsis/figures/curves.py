"""``rsis curves``: training curves of one table's runs, from each run's ``metrics.csv``.

Two panels: validation instance IoU and training loss (soft IoU) per epoch, one line per
configuration. A configuration given several runs (``--run LABEL PATH`` repeated with one
label, e.g. one per seed) is drawn as the mean over its runs with a band from their minimum to
their maximum; at an epoch some runs never reached (they stopped early) the mean is over the
runs that did. Each run's best epoch (the checkpoint early stopping keeps: the first epoch with
the highest validation instance IoU) is marked on the IoU panel.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from rsis.cli import add_command, output_file
from rsis.errors import UserError
from rsis.io import atomic_path, read_user_text

log = logging.getLogger(__name__)

COLUMNS = ("epoch", "train_loss", "val_instance_iou")
PANELS = {
    "val_instance_iou": "Validation instance IoU (%)",
    "train_loss": "Training loss (soft IoU)",
}


@dataclass
class Configuration:
    """One line of the plot: a label and the per-epoch metrics of each of its runs (seeds)."""

    label: str
    runs: list[pd.DataFrame]

    def summary(self, column: str) -> pd.DataFrame:
        """Per epoch: mean, min and max of ``column`` over the runs that reached the epoch."""
        stacked = pd.concat([run.set_index("epoch")[column] for run in self.runs], axis=1)
        return pd.DataFrame(
            {"mean": stacked.mean(axis=1), "low": stacked.min(axis=1), "high": stacked.max(axis=1)}
        )

    def best_epochs(self) -> list[tuple[int, float]]:
        """(epoch, validation instance IoU) of each run's best checkpoint."""
        best = [run.loc[run["val_instance_iou"].idxmax()] for run in self.runs]
        return [(int(row["epoch"]), float(row["val_instance_iou"])) for row in best]


WHAT = "--run LABEL the metrics.csv that rsis train writes in the run folder"


def _cell(value: object) -> str:
    """A CSV cell as a message shows it: quoted text, a number, or an empty cell."""
    if isinstance(value, str):
        return repr(value)
    return "an empty cell" if pd.isna(value) else f"{float(value):g}"


def read_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """A run's ``metrics.csv`` (written by ``rsis train``), checked for the needed columns
    and for a number in each of their cells."""
    text = read_user_text(path, WHAT, "a CSV file")
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        reason = str(error).strip().splitlines()[-1]
        raise UserError(f"{path}: cannot read training metrics ({reason}); give {WHAT}") from error
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing or frame.empty:
        raise UserError(
            f"{path}: not a training metrics file (missing {', '.join(missing) or 'rows'}); "
            "pass the metrics.csv that rsis train writes in the run folder"
        )
    for column in COLUMNS:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = ~numbers.abs().lt(float("inf"))  # text, an empty cell (NaN) or an infinity
        if bad.any():
            row = int(bad.idxmax())
            raise UserError(
                f"{path}: line {row + 2}, column {column!r} holds {_cell(frame[column][row])}, "
                f"not a finite number; give {WHAT}"
            )
        frame[column] = numbers
    return frame.sort_values("epoch").reset_index(drop=True)


def group_runs(pairs: Sequence[tuple[str, str]]) -> list[Configuration]:
    """``(label, path)`` pairs grouped by label, in first-seen order."""
    groups: dict[str, list[pd.DataFrame]] = {}
    for label, path in pairs:
        groups.setdefault(label, []).append(read_metrics(path))
    return [Configuration(label, runs) for label, runs in groups.items()]


def _draw(axes, configurations: Sequence[Configuration], column: str) -> None:
    """One panel: a line per configuration, a band where it has several runs."""
    colors = matplotlib.colormaps["tab10" if len(configurations) <= 10 else "tab20"].colors
    scale = 100 if column == "val_instance_iou" else 1
    for index, config in enumerate(configurations):
        color = colors[index % len(colors)]
        stats = config.summary(column) * scale
        axes.plot(stats.index, stats["mean"], color=color, linewidth=1.8, label=config.label)
        if len(config.runs) > 1:
            axes.fill_between(stats.index, stats["low"], stats["high"], color=color, alpha=0.2)
        if column == "val_instance_iou":
            epochs, values = zip(*config.best_epochs(), strict=True)
            axes.scatter(epochs, [v * scale for v in values], color=color, marker="*", s=140,
                         edgecolors="black", linewidths=0.6, zorder=3)  # fmt: skip
    axes.set_xlabel("epoch")
    axes.set_title(PANELS[column], fontsize=12)
    axes.grid(alpha=0.3)
    axes.xaxis.get_major_locator().set_params(integer=True)


def curves_figure(
    configurations: Sequence[Configuration], title: str, out: str | os.PathLike
) -> None:
    """Write the two-panel PNG (IoU left, loss right) with one legend for both."""
    figure = Figure(figsize=(12, 4.6 + 0.22 * len(configurations)), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2)
    _draw(left, configurations, "val_instance_iou")
    _draw(right, configurations, "train_loss")
    handles, labels = left.get_legend_handles_labels()
    best = left.scatter([], [], color="white", marker="*", s=140, edgecolors="black")
    figure.legend([*handles, best], [*labels, "best epoch (kept by early stopping)"],
                  loc="outside lower center", ncols=2, fontsize=10, frameon=False)  # fmt: skip
    seeds = sorted({len(c.runs) for c in configurations})
    counts = "-".join(str(n) for n in sorted({seeds[0], seeds[-1]}))
    runs = "one run each" if seeds == [1] else f"mean and min-max band over {counts} runs"
    figure.suptitle(f"{title}: training curves ({runs})", fontsize=13)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")


def _curves_command(args: argparse.Namespace) -> None:
    configurations = group_runs(args.run)
    curves_figure(configurations, args.title, Path(args.out))
    log.info("wrote %s (%d configurations)", args.out, len(configurations))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis curves``."""
    parser = add_command(subparsers, "curves")
    parser.add_argument(
        "--run",
        nargs=2,
        action="append",
        required=True,
        metavar=("LABEL", "METRICS_CSV"),
        help="a run's metrics.csv and its configuration's label; repeat a label for seeds",
    )
    parser.add_argument("--title", default="Runs", help="figure title, e.g. 'Table 1'")
    parser.add_argument("--out", required=True, type=output_file, help="destination .png")
    parser.set_defaults(func=_curves_command)
