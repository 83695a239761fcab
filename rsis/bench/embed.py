"""``rsis bench embed``: expression embedding throughput, batched vs one at a time.

Embeds the real RefCOCO expressions with the packaged model (``minilm``), and prints, for each
``--precision``: expressions/s batched (length-sorted batches, as ``rsis embed`` runs),
expressions/s one expression per forward pass, their ratio, and the effective GFLOP/s of the
batched run against this machine's matmul peak in that precision, measured in the same run.
With both precisions it also prints how far the bf16 embeddings are from the fp32 ones.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics.pairwise import paired_cosine_distances
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from rsis.bench.timing import matmul_peak_gflops
from rsis.cli import non_negative_int, positive_int
from rsis.cpu import add_threads_argument, use_threads
from rsis.errors import UserError
from rsis.text.embed import DEFAULT_BATCH_SIZE, PRECISIONS, embed_sequences
from rsis.text.models import MINILM, load_model, load_tokenizer, max_length, resolve_model
from rsis.text.tokenize import encode

DEFAULT_CSV_DIR = Path(__file__).resolve().parents[3] / "shared/data/refcoco-expressions"
BERT_BASE_CASED_VOCAB = 28_996
REFCOCO_EXPRESSIONS = 142_210  # UNC splits, every expression of RefCOCO


def bert_base_shaped(tokenizer: PreTrainedTokenizerBase) -> BertModel:
    """The paper's text model's shape (bert-base-cased: 12 layers, hidden 768, 12 heads) with
    random weights (seed 0), in eval mode: its cost, without its weights.

    The vocabulary is the larger of bert-base-cased's 28,996 and ``tokenizer``'s, so every id
    fits; an embedding lookup costs the same whatever the vocabulary size.
    """
    torch.manual_seed(0)
    config = BertConfig(vocab_size=max(BERT_BASE_CASED_VOCAB, len(tokenizer)))
    return BertModel(config).eval()


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
) -> tuple[float, float, np.ndarray]:
    """Fewest wall seconds ``embed_sequences`` took over ``repeats`` runs, the process CPU
    seconds (all threads) of that run, and its mean embeddings.

    The CPU seconds are the figure to scale from on a shared machine: other processes stretch
    the wall time far more than the CPU time.
    """
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        _, mean = embed_sequences(model, ids, ptr, progress=False, **kwargs)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if wall < best:
            best, best_cpu = wall, cpu
    return best, best_cpu, mean


def agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Smallest cosine similarity and largest absolute difference between matching rows."""
    cosine = 1 - paired_cosine_distances(reference, other)
    return float(cosine.min()), float(np.abs(reference - other).max())


def subset(ids: np.ndarray, ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ragged ids and offsets of the chosen rows."""
    pieces = [ids[ptr[r] : ptr[r + 1]] for r in rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    return np.concatenate(pieces), offsets


def _bench_embed_command(args: argparse.Namespace) -> None:
    """Time batched and one-at-a-time embedding and print the figures."""
    use_threads(args.threads)
    texts = load_expressions(args.csv_dir)["sent"].tolist()
    if args.count:
        texts = [texts[i] for i in np.random.default_rng(1).permutation(len(texts))[: args.count]]
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    model = bert_base_shaped(tokenizer) if args.bert_base else load_model(source)
    ids, ptr, _ = encode(tokenizer, texts, max_length(source, tokenizer))
    n = len(texts)
    pad_id = tokenizer.pad_token_id or 0

    flops = useful_flops(model, ids, ptr)
    rows = np.random.default_rng(0).permutation(n)[: min(n, args.single_count)]
    shape = "bert-base-cased's shape, random weights, tokenizer of " if args.bert_base else ""
    print(f"{'model':<22} {shape}{args.model} ({source.path})")
    print(f"{'threads':<22} {torch.get_num_threads()} (torch {torch.__version__}, CPU)")
    print(f"{'timings':<22} best of {args.repeats} runs each")
    print(f"{'expressions':<22} {n} (mean {np.diff(ptr).mean():.2f} tokens with [CLS]/[SEP])")
    means = {}
    for precision in args.precision:
        peak = matmul_peak_gflops(args.matmul_size, args.repeats, PRECISIONS[precision])
        common = dict(pad_id=pad_id, precision=precision)
        timed(model, *subset(ids, ptr, np.arange(min(n, args.batch_size))), 1, **common)
        batched, batched_cpu, means[precision] = timed(
            model, ids, ptr, args.repeats, batch_size=args.batch_size, **common
        )
        single, _, _ = timed(model, *subset(ids, ptr, rows), args.repeats, batch_size=1, **common)
        batched_rate, single_rate, gflops = n / batched, len(rows) / single, flops / batched / 1e9
        lines = [
            (
                "batched",
                f"{batched_rate:.1f} expr/s ({batched:.2f} s, batches of one length, "
                f"at most {args.batch_size})",
            ),
            (
                "batched CPU",
                f"{1000 * batched_cpu / n:.2f} CPU ms per expression ({batched_cpu:.2f} CPU s, "
                f"all threads, same run; {REFCOCO_EXPRESSIONS:,} expressions: "
                f"{REFCOCO_EXPRESSIONS * batched_cpu / n / 60:.1f} CPU min)",
            ),
            (
                "one at a time",
                f"{single_rate:.1f} expr/s (timed on {len(rows)} of {n}, random sample, seed 0)",
            ),
            ("speed-up", f"{batched_rate / single_rate:.2f}x"),
            ("effective", f"{gflops:.1f} GFLOP/s (FLOPs without padding / batched time)"),
            ("matmul peak", f"{peak:.1f} GFLOP/s (torch.matmul {args.matmul_size}^2)"),
            ("share of peak", f"{100 * gflops / peak:.0f}%"),
        ]
        for name, value in lines:
            print(f"{precision + ' ' + name:<22} {value}")
    if {"fp32", "bf16"} <= means.keys():
        cosine, difference = agreement(means["fp32"], means["bf16"])
        print(f"{'bf16 vs fp32':<22} mean embeddings: min cosine {cosine:.6f}, ", end="")
        print(f"max abs difference {difference:.4f}")


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis bench embed``."""
    parser = bench_subparsers.add_parser("embed", help="expression embedding throughput")
    parser.add_argument("--csv-dir", type=Path, default=DEFAULT_CSV_DIR, help="expression CSVs")
    parser.add_argument("--model", default=MINILM, help="minilm, a model directory, or a hub id")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--single-count",
        type=positive_int,
        default=1000,
        help="expressions timed one at a time (a random sample)",
    )
    parser.add_argument(
        "--bert-base",
        action="store_true",
        help="time a random-weight model of bert-base-cased's shape (the paper's text model) "
        "with --model's tokenizer, instead of --model itself",
    )
    parser.add_argument(
        "--count",
        type=non_negative_int,
        default=0,
        help="time this many random expressions (0: all)",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timings kept: the best of these"
    )
    parser.add_argument(
        "--matmul-size", type=positive_int, default=4096, help="side of the peak matmul"
    )
    add_threads_argument(parser)
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=PRECISIONS,
        default=list(PRECISIONS),
        help="precisions to time (default: fp32 and bf16)",
    )
    parser.set_defaults(func=_bench_embed_command)
