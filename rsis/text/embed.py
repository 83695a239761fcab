"""``rsis embed``: pooled output and masked mean of the last layer for every expression."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel

from rsis.cli import add_command, output_file, positive_int
from rsis.cpu import add_threads_argument, use_threads
from rsis.device import add_device_argument, resolve_device
from rsis.errors import UserError
from rsis.io import atomic_path, check_identity
from rsis.progress import progress_bar
from rsis.text.models import (
    load_model,
    load_tokenizer,
    resolve_model,
    tokenizer_identity,
    weights_hash,
)
from rsis.text.tokenize import read_tokens

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 128
# fp32: exact (the default). bf16: the encoder's matrix products in bfloat16 under autocast,
# about twice as fast on CPUs with AVX512-BF16 or AMX and on GPUs; the embeddings stay within
# cosine 0.9999 of fp32 (BENCHMARKS.md) and are stored as float32 either way.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX)."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, D) over the positions where ``mask`` (B, T) is 1."""
    weights = mask.to(hidden.dtype)
    return torch.einsum("bt,btd->bd", weights, hidden) / weights.sum(1, keepdim=True)


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of one length each, shortest first.

    Rows are sorted by length and cut where the length changes or after ``batch_size`` rows,
    so no expression is ever padded (padding costs FLOPs and, on CPU, most of the gain).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    order = np.argsort(lengths, kind="stable")
    starts = np.flatnonzero(np.diff(lengths[order], prepend=-1))
    runs = np.split(order, starts[1:])
    return [run[i : i + batch_size] for run in runs for i in range(0, len(run), batch_size)]


def embed_batch(
    model: PreTrainedModel, sequences: list[torch.Tensor], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled output and masked mean of the last layer for one batch of token id sequences.

    Sequences of different lengths are padded with ``pad_id`` and masked out, both in
    attention and in the mean, so the padding never changes a result.
    """
    input_ids = pad_sequence(sequences, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(seq) for seq in sequences])
    mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long().to(device)
    out = model(input_ids=input_ids.to(device), attention_mask=mask)
    return out.pooler_output, masked_mean(out.last_hidden_state, mask)


def embed_sequences(
    model: PreTrainedModel,
    ids: np.ndarray,
    ptr: np.ndarray,
    *,
    pad_id: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | None = None,
    precision: str = "fp32",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the encoder over ragged token ids in ``length_batches``.

    Args:
        model: a BERT-family ``AutoModel`` (with pooler), in eval mode.
        ids: flat token ids; sequence ``i`` is ``ids[ptr[i]:ptr[i + 1]]``.
        ptr: (N + 1,) offsets.
        pad_id: the tokenizer's padding id (masked out, so its value never matters).
        batch_size: most expressions per forward pass.
        device: where to run; default the model's device.
        precision: ``fp32`` or ``bf16`` (autocast), see ``PRECISIONS``.
        progress: show a tqdm bar.

    Returns:
        ``pooled`` and ``mean``, both (N, hidden_size) float32, in input order.
    """
    device = device or model.device
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    lengths = np.diff(ptr)
    pooled = np.empty((len(lengths), model.config.hidden_size), dtype=np.float32)
    mean = np.empty_like(pooled)
    tokens = torch.from_numpy(ids.astype(np.int64))
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32"),
        progress_bar(total=len(lengths), unit="expr", disable=not progress) as bar,
    ):
        for rows in length_batches(lengths, batch_size):
            sequences = [tokens[ptr[r] : ptr[r + 1]] for r in rows]
            batch_pooled, batch_mean = embed_batch(model, sequences, pad_id, device)
            pooled[rows] = batch_pooled.float().cpu().numpy()
            mean[rows] = batch_mean.float().cpu().numpy()
            bar.update(len(rows))
    return pooled, mean


def _embed_command(args: argparse.Namespace) -> None:
    """Embed every expression of a tokens file with the model that tokenized it."""
    device = resolve_device(args.device)  # a bad --device is refused before any file is read
    table = read_tokens(args.tokens)  # first: a wrong file is named before any model loads
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    identity = tokenizer_identity(args.model, tokenizer)
    check_identity(
        args.tokens,
        table.attrs,
        {k: identity[k] for k in ("vocab_hash", "lowercase")},
        writer="rsis tokenize",
    )
    model = load_model(source)
    limit = model.config.max_position_embeddings
    if table.lengths.max() > limit:
        raise UserError(
            f"{args.tokens} holds expressions of {table.lengths.max()} tokens but model "
            f"{args.model!r} accepts at most {limit}; rerun `rsis tokenize` with this model"
        )
    use_threads(args.threads)
    if args.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log.warning("this CPU has no native bfloat16 support: --precision bf16 will be slow")
    log.info(
        "embedding %d expressions with %s on %s (%s)",
        len(table),
        args.model,
        device,
        args.precision,
    )
    pooled, mean = embed_sequences(
        model.to(device),
        table.ids,
        table.ptr,
        pad_id=tokenizer.pad_token_id or 0,
        batch_size=args.batch_size,
        device=device,
        precision=args.precision,
    )
    with atomic_path(args.out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("sent_id", data=table.sent_id)
        f.create_dataset("pooled", data=pooled)
        f.create_dataset("mean", data=mean)
        f.attrs.update(
            model=args.model,
            model_revision=source.revision,
            model_hash=weights_hash(source),
            hidden_size=model.config.hidden_size,
            tokens_hash=table.attrs["tokens_hash"],
            vocab_hash=identity["vocab_hash"],
            precision=args.precision,
        )
    log.info("wrote %s", args.out)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis embed``."""
    parser = add_command(subparsers, "embed")
    parser.add_argument("--tokens", type=Path, required=True, help="tokens.h5 from rsis tokenize")
    parser.add_argument("--model", required=True, help="minilm, a model directory, or a hub id")
    parser.add_argument("--out", type=output_file, required=True, help="embeddings.h5 to write")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help="expressions per batch, grouped by token length (default %(default)s)",
    )
    add_device_argument(parser)
    add_threads_argument(parser)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (exact, default) or bf16 (about 2x faster where the hardware has it)",
    )
    parser.set_defaults(func=_embed_command)
