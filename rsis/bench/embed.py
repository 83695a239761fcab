"""``rsis bench embed``: expression embedding throughput, batched vs one at a time.

Embeds the real RefCOCO expressions with the packaged model (``minilm``), and prints
expressions/s batched (length-sorted batches, as ``rsis embed`` runs), expressions/s one
expression per forward pass, their ratio, and the effective GFLOP/s of the batched run against
this machine's fp32 matmul peak, measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel

from rsis.errors import UserError
from rsis.text.embed import DEFAULT_BATCH_SIZE, embed_sequences
from rsis.text.models import MINILM, load_model, load_tokenizer, max_length, resolve_model
from rsis.text.tokenize import encode

DEFAULT_CSV_DIR = Path(__file__).resolve().parents[3] / "shared/data/refcoco-expressions"


def load_expressions(csv_dir: Path) -> pd.DataFrame:
    """Expressions of every ``*.csv`` in ``csv_dir``: columns ``sent_id``, ``split``, ``sent``.

    The files are named ``<dataset>_<splitBy>_<split>.csv`` (columns include ``sent_id`` and
    ``sent``); the split is the last ``_`` part of the name.
    """
    files = sorted(csv_dir.glob("*.csv"))
    if not files:
        raise UserError(f"no *.csv files in {csv_dir}: give --csv-dir with expression CSVs")
    frames = [
        pd.read_csv(
            f, usecols=["sent_id", "sent"], keep_default_na=False, dtype={"sent": str}
        ).assign(split=f.stem.rsplit("_", 1)[-1])
        for f in files
    ]
    return pd.concat(frames, ignore_index=True)[["sent_id", "split", "sent"]]


def matmul_peak_gflops(size: int, repeats: int = 3) -> float:
    """Best fp32 GFLOP/s of ``torch.matmul`` on two ``size`` x ``size`` matrices."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def useful_flops(model: PreTrainedModel, ids: np.ndarray, ptr: np.ndarray) -> float:
    """FLOPs of the forward passes on every sequence alone (no padding), counted by torch."""
    lengths = np.diff(ptr)
    per_length: dict[int, float] = {}
    with torch.inference_mode():
        for length in np.unique(lengths):
            row = int(np.flatnonzero(lengths == length)[0])
            sequence = torch.from_numpy(ids[ptr[row] : ptr[row + 1]].astype(np.int64))[None]
            with FlopCounterMode(display=False) as counter:
                model(input_ids=sequence)
            per_length[int(length)] = counter.get_total_flops()
    return float(sum(per_length[n] * count for n, count in Counter(lengths.tolist()).items()))


def timed(
    model: PreTrainedModel, ids: np.ndarray, ptr: np.ndarray, repeats: int, **kwargs
) -> float:
    """Fewest seconds ``embed_sequences`` took on the given sequences over ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        embed_sequences(model, ids, ptr, progress=False, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best


def subset(ids: np.ndarray, ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ragged ids and offsets of the chosen rows."""
    pieces = [ids[ptr[r] : ptr[r + 1]] for r in rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    return np.concatenate(pieces), offsets


def run(args: argparse.Namespace) -> None:
    """Time batched and one-at-a-time embedding and print the figures."""
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = load_expressions(args.csv_dir)["sent"].tolist()
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    model = load_model(source)
    ids, ptr, _ = encode(tokenizer, texts, max_length(source, tokenizer))
    n = len(texts)
    pad_id = tokenizer.pad_token_id or 0

    peak = matmul_peak_gflops(args.matmul_size, args.repeats)
    warm_up = subset(ids, ptr, np.arange(min(n, args.batch_size)))
    timed(model, *warm_up, repeats=1, pad_id=pad_id)
    batched = timed(model, ids, ptr, args.repeats, pad_id=pad_id, batch_size=args.batch_size)
    rows = np.random.default_rng(0).permutation(n)[: min(n, args.single_count)]
    single = timed(model, *subset(ids, ptr, rows), args.repeats, pad_id=pad_id, batch_size=1)
    gflops = useful_flops(model, ids, ptr) / batched / 1e9

    batched_rate, single_rate = n / batched, len(rows) / single
    lines = [
        ("model", f"{args.model} ({source.path})"),
        ("threads", f"{torch.get_num_threads()} (torch {torch.__version__}, CPU)"),
        ("timings", f"best of {args.repeats} runs each"),
        ("expressions", f"{n} (mean {np.diff(ptr).mean():.2f} tokens with [CLS]/[SEP])"),
        (
            "batched",
            f"{batched_rate:.1f} expr/s ({batched:.2f} s, batches of one length, "
            f"at most {args.batch_size})",
        ),
        (
            "one at a time",
            f"{single_rate:.1f} expr/s (timed on {len(rows)} of {n}, random sample, seed 0)",
        ),
        ("speed-up", f"{batched_rate / single_rate:.2f}x"),
        ("effective", f"{gflops:.1f} GFLOP/s (FLOPs without padding / batched time)"),
        ("fp32 matmul peak", f"{peak:.1f} GFLOP/s (torch.matmul {args.matmul_size}^2)"),
        ("share of peak", f"{100 * gflops / peak:.0f}%"),
    ]
    for name, value in lines:
        print(f"{name:<17} {value}")


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis bench embed``."""
    parser = bench_subparsers.add_parser("embed", help="expression embedding throughput")
    parser.add_argument("--csv-dir", type=Path, default=DEFAULT_CSV_DIR, help="expression CSVs")
    parser.add_argument("--model", default=MINILM, help="minilm, a model directory, or a hub id")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--single-count",
        type=int,
        default=1000,
        help="expressions timed one at a time (a random sample)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timings kept: the best of these")
    parser.add_argument("--matmul-size", type=int, default=4096, help="side of the peak matmul")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.set_defaults(func=run)
