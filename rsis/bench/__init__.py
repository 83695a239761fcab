"""``rsis bench``: benchmarks that print their figures (one module per benchmark)."""

from __future__ import annotations

import argparse
import importlib

from rsis.cli import add_command

# Modules that expose ``register(bench_subparsers)``; each adds one ``rsis bench`` subcommand.
BENCH_MODULES: tuple[str, ...] = (
    "rsis.bench.embed",
    "rsis.bench.gpu",
    "rsis.bench.loader",
    "rsis.bench.metrics",
    "rsis.bench.precision",
    "rsis.bench.rehearsal",
    "rsis.bench.train",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis bench`` and every benchmark of ``BENCH_MODULES`` under it."""
    parser = add_command(subparsers, "bench")
    bench_subparsers = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name in BENCH_MODULES:
        importlib.import_module(name).register(bench_subparsers)
