"""Progress bars: live in a terminal, sparse in a log file."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_REDRAW_S = 30.0
"""Seconds between redraws when stderr is not a terminal: a redirected bar appends a line per
redraw (10 per second by default: 140-240 KB per demo training log)."""


class ProgressBar(tqdm):
    """A tqdm bar whose ``set_postfix`` waits for the next timed redraw instead of forcing
    one (tqdm's default: a redraw, so a log line, per training step)."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = False, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh, **kwargs)


def progress_bar(*args: Any, **options: Any) -> ProgressBar:
    """``tqdm(*args, **options)``, redrawn at most every ``LOG_REDRAW_S`` seconds when
    stderr is not a terminal (a Snakemake or SLURM log)."""
    if not sys.stderr.isatty():
        options.setdefault("mininterval", LOG_REDRAW_S)
    return ProgressBar(*args, **options)
