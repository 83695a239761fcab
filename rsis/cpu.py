"""CPU compute set-up of every command: its thread count, and subnormal floats flushed."""

from __future__ import annotations

import argparse
import logging

import torch

from rsis.cli import non_negative_int
from rsis.errors import UserError

log = logging.getLogger(__name__)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads``: the CPU cores a command computes on (a cluster job passes its CPUs)."""
    parser.add_argument(
        "--threads",
        type=non_negative_int,
        default=0,
        help="torch CPU threads (0: torch's default)",
    )


def use_threads(threads: int) -> None:
    """Compute on ``threads`` CPU threads (0 keeps torch's default, one per core), with
    subnormal floats flushed to zero (``flush_subnormals``). Call it before any computation."""
    if threads < 0:
        raise UserError(f"--threads {threads}: give 0 (torch's default) or a positive count")
    flush_subnormals()
    if threads:
        torch.set_num_threads(threads)


def flush_subnormals() -> None:
    """Treat subnormal floats (below 1.2e-38) as zero, in and out, on every CPU compute thread.

    Training drives some of the decoder's values into the subnormal range, where x86 CPUs
    compute dozens of times slower: the demo's trainer fell from about 100 to 17-24 images/s
    over a run (BENCHMARKS.md, "Subnormal floats"). Flushing them changes results by less
    than 1.2e-38 per value. The setting is per thread and threads inherit it when created,
    so it must come before torch starts its thread pool (the first parallel operation);
    where it comes later, a warning says so.
    """
    if not torch.set_flush_denormal(True):
        log.warning("this CPU cannot flush subnormal floats: training may slow down over a run")
        return
    tiny = torch.full((1 << 20,), torch.finfo(torch.float32).tiny) * 0.5  # split over threads
    if bool(tiny.any()):
        log.warning(
            "subnormal floats are flushed on this thread only: torch's thread pool started "
            "before rsis.cpu.flush_subnormals"
        )
