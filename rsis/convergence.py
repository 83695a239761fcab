"""How each training run ended: its best epoch and why it stopped (early stop or epoch cap).

The trainer writes ``convergence.json`` into the run folder when it stops; ``rsis
convergence`` summarises every run and seed in ``convergence.md`` beside the tables. A run
that ran into the epoch cap was still improving within ``patience`` epochs of its end: its
numbers measure how far it got, not where it converged.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from rsis.cli import add_command, output_file
from rsis.errors import UserError
from rsis.fields import check_fields
from rsis.io import atomic_path, read_user_json

log = logging.getLogger(__name__)

EARLY_STOP = "early stop"
EPOCH_CAP = "epoch cap"


def patience_spent(epoch: int, best_epoch: int, patience: int, min_epochs: int) -> bool:
    """The early-stopping rule after epoch ``epoch`` (from 0): ``patience`` epochs have passed
    without a better one, and at least ``min_epochs`` epochs have run."""
    return epoch + 1 >= min_epochs and epoch - best_epoch >= patience


def last_epoch_under(
    val_ious: Sequence[float], epoch_cap: int, patience: int, min_epochs: int
) -> int | None:
    """The epoch (from 0) after which a run with these validation scores ends under this cap
    and stopping rule, as the trainer decides it; None when it would go on past them."""
    best, best_epoch = -math.inf, -1
    for epoch, score in enumerate(val_ious):
        if score > best:
            best, best_epoch = score, epoch
        if epoch + 1 >= epoch_cap or patience_spent(epoch, best_epoch, patience, min_epochs):
            return epoch
    return None


# A field's annotation and the JSON type its value has in convergence.json.
FIELD_KINDS: dict[str, type] = {"str": str, "int": int, "float": float}


@dataclass(frozen=True)
class Convergence:
    """How one run ended.

    Attributes:
        run: the run's id (grid coordinates, without the seed).
        seed: the run's seed.
        best_epoch: the epoch (from 0) with the best validation instance IoU.
        best_val_instance_iou: that IoU, a fraction.
        epochs_run: epochs trained in all.
        epoch_cap: the most epochs the run was allowed.
        patience: epochs without improvement that stop it.
        reason: ``EARLY_STOP`` or ``EPOCH_CAP``.
        min_epochs: the fewest epochs early stopping lets it run.
    """

    run: str
    seed: int
    best_epoch: int
    best_val_instance_iou: float
    epochs_run: int
    epoch_cap: int
    patience: int
    reason: str
    min_epochs: int = 1  # records written before the setting existed

    @classmethod
    def of_history(
        cls,
        run: str,
        seed: int,
        val_ious: Sequence[float],
        epoch_cap: int,
        patience: int,
        min_epochs: int,
    ) -> Convergence:
        """Read how a run ended from its per-epoch validation instance IoU.

        A run stopped early when its last epoch lies ``patience`` epochs after its best one
        and it ran at least ``min_epochs`` (the trainer's rule); otherwise it ran into the cap.
        """
        if not val_ious:
            raise UserError(f"run {run} seed {seed} has no finished epoch")
        best = max(range(len(val_ious)), key=lambda epoch: (val_ious[epoch], -epoch))
        stopped = patience_spent(len(val_ious) - 1, best, patience, min_epochs)
        return cls(
            run=run,
            seed=seed,
            best_epoch=best,
            best_val_instance_iou=float(val_ious[best]),
            epochs_run=len(val_ious),
            epoch_cap=epoch_cap,
            patience=patience,
            reason=EARLY_STOP if stopped else EPOCH_CAP,
            min_epochs=min_epochs,
        )

    def write(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Convergence:
        """A ``convergence.json``; a missing, unreadable or malformed one names the file and
        the field."""
        data = read_user_json(path, "--records the convergence.json that rsis train writes")
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a convergence record (a JSON object); retrain the run")
        needed = [f for f in fields(cls) if f.name in data or f.default is MISSING]
        kinds = {f.name: FIELD_KINDS[f.type] for f in needed}  # a field with a default may lack
        check_fields(data, kinds, f"{path}: not a convergence record", "retrain the run")
        return cls(**{field.name: data[field.name] for field in fields(cls) if field.name in data})


def convergence_markdown(records: Iterable[Convergence]) -> str:
    """``convergence.md``: a count of runs that hit the cap, then one row per run and seed."""
    rows = sorted(records, key=lambda r: (r.run, r.seed))
    capped = [r for r in rows if r.reason == EPOCH_CAP]
    table = pd.DataFrame(
        [
            {
                "Run": r.run,
                "Seed": str(r.seed),
                "Best epoch": str(r.best_epoch + 1),
                "Epochs run": f"{r.epochs_run} of {r.epoch_cap}",
                "Patience": str(r.patience),
                "Min epochs": str(r.min_epochs),
                "Best val instance IoU": f"{100 * r.best_val_instance_iou:.2f}",
                "Stopped by": r.reason,
            }
            for r in rows
        ]
    )
    verdict = (
        f"Every run stopped early ({len(rows)} runs)."
        if not capped
        else f"{len(capped)} of {len(rows)} runs hit the epoch cap: they were still improving, "
        "and their numbers measure how far they got, not where they converged."
    )
    return (
        "# Convergence: best epoch and stopping reason per run and seed\n\n"
        "Early stopping on validation instance IoU, never before the minimum epochs; epochs "
        "count from 1. The epoch cap, patience and minimum are ours (the paper gives none): "
        "config.yaml, settings.\n\n"
        f"{verdict}\n\n{table.to_markdown(index=False, disable_numparse=True)}\n"
    )


def capped_runs(records: Iterable[Convergence]) -> Mapping[tuple[str, int], Convergence]:
    """The runs (by run id and seed) that hit the epoch cap."""
    return {(r.run, r.seed): r for r in records if r.reason == EPOCH_CAP}


def _convergence_command(args: argparse.Namespace) -> None:
    records = [Convergence.read(path) for path in args.records]
    with atomic_path(args.out) as tmp:
        tmp.write_text(convergence_markdown(records))
    capped = capped_runs(records)
    if capped:
        log.warning("%d of %d runs hit the epoch cap: %s", len(capped), len(records), list(capped))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis convergence``."""
    parser = add_command(subparsers, "convergence")
    parser.add_argument(
        "--records", nargs="+", required=True, type=Path, help="convergence.json of each run"
    )
    parser.add_argument("--out", required=True, type=output_file, help="convergence.md to write")
    parser.set_defaults(func=_convergence_command)
