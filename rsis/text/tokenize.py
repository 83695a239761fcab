"""``rsis tokenize``: WordPiece ids of every referring expression, stored ragged in HDF5."""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from rsis.cli import add_command, output_file
from rsis.data.refer import add_refer_arguments, refer_from_args
from rsis.errors import UserError
from rsis.io import atomic_path, open_hdf5, plain_attrs, require_members
from rsis.text.models import load_tokenizer, max_length, resolve_model, tokenizer_identity

log = logging.getLogger(__name__)

# What ``write_tokens`` always writes; ``read_tokens`` refuses a file that lacks any of it.
TOKENS_DATASETS = ("sent_id", "split", "text", "input_ids/ids", "input_ids/ptr")
TOKENS_ATTRS = ("vocab_hash", "lowercase", "tokens_hash")


@dataclass
class TokenTable:
    """Token ids of N expressions: row ``i`` owns ``ids[ptr[i]:ptr[i + 1]]``.

    Args:
        sent_id: (N,) int64 sentence ids.
        split: (N,) split name of each sentence.
        text: (N,) the expressions as given.
        ids: flat int32 token ids, special tokens included.
        ptr: (N + 1,) int64 offsets into ``ids``.
        attrs: tokenizer identity and provenance (written as HDF5 attributes).
    """

    sent_id: np.ndarray
    split: np.ndarray
    text: np.ndarray
    ids: np.ndarray
    ptr: np.ndarray
    attrs: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sent_id)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) number of tokens of each expression."""
        return np.diff(self.ptr)

    def sequence(self, row: int) -> np.ndarray:
        """Token ids of one expression."""
        return self.ids[self.ptr[row] : self.ptr[row + 1]]


def require_text(text: str, what: str) -> None:
    """Refuse a string that is not Unicode text, which no tokenizer reads: one holding a lone
    surrogate, as a command-line byte that is not UTF-8 (``\\udce9``) or a ``\\udcff``
    escape in JSON becomes.

    Args:
        what: how the message calls ``text`` (e.g. ``expression 2``).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UserError(
            f"{what} {text!r} is not UTF-8 text (character {error.start + 1} is "
            f"{text[error.start]!r}, a byte that is not UTF-8 or a lone surrogate escape); "
            "give the expression as UTF-8 text"
        ) from error


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenize ``texts``; an expression longer than ``limit`` tokens is truncated to it.

    Truncation is the tokenizer's own (``truncation=True``: the end of the expression is cut,
    the final ``[SEP]`` kept), applied only to the expressions that need it.

    Returns:
        flat int32 ids, (N + 1,) int64 offsets, (N,) bool: whether each was truncated.

    Raises:
        UserError: an expression is not Unicode text (``require_text``).
    """
    for number, text in enumerate(texts, 1):
        require_text(text, f"expression {number}")
    sequences = tokenizer(list(texts), return_attention_mask=False, return_token_type_ids=False)[
        "input_ids"
    ]
    truncated = np.array([len(seq) > limit for seq in sequences], dtype=bool)
    long_rows = np.flatnonzero(truncated)
    if len(long_rows):
        cut = tokenizer(
            [texts[i] for i in long_rows],
            truncation=True,
            max_length=limit,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        for row, seq in zip(long_rows, cut, strict=True):
            sequences[row] = seq
    ptr = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum([len(seq) for seq in sequences], out=ptr[1:])
    ids = np.fromiter((i for seq in sequences for i in seq), dtype=np.int32, count=ptr[-1])
    return ids, ptr, truncated


def tokens_hash(sent_id: np.ndarray, ids: np.ndarray, ptr: np.ndarray) -> str:
    """SHA-256 of the token content, so later steps can tell which tokens they came from."""
    digest = hashlib.sha256()
    for array in (sent_id.astype(np.int64), ids.astype(np.int32), ptr.astype(np.int64)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def tokenize_sentences(
    sentences: Sequence[tuple[int, str, str]],
    tokenizer: PreTrainedTokenizerBase,
    identity: dict[str, object],
    limit: int,
) -> TokenTable:
    """Tokenize ``(sent_id, split, text)`` triples (the reader's ``sentences()``).

    Empty or whitespace-only expressions are kept (they become ``[CLS] [SEP]``) and logged as a
    warning; expressions longer than ``limit`` tokens are truncated and counted.

    Args:
        sentences: one triple per expression; sent_ids must be unique.
        tokenizer: the model's tokenizer.
        identity: ``tokenizer_identity`` of that tokenizer, stored as attributes.
        limit: the model's maximum sequence length.
    """
    if not sentences:
        raise UserError("no expressions to tokenize: the dataset has no sentences")
    sent_id = np.array([s[0] for s in sentences], dtype=np.int64)
    duplicates = [k for k, n in Counter(sent_id.tolist()).items() if n > 1]
    if duplicates:
        raise UserError(f"sent_id values occur more than once: {sorted(duplicates)[:10]}")
    texts = [s[2] for s in sentences]
    ids, ptr, truncated = encode(tokenizer, texts, limit)
    _log_summary(sent_id, texts, ids, ptr, truncated, tokenizer, limit)
    attrs = dict(identity)
    attrs.update(
        max_length=limit,
        n_truncated=int(truncated.sum()),
        tokens_hash=tokens_hash(sent_id, ids, ptr),
    )
    return TokenTable(
        sent_id=sent_id,
        split=np.array([s[1] for s in sentences], dtype=object),
        text=np.array(texts, dtype=object),
        ids=ids,
        ptr=ptr,
        attrs=attrs,
    )


def _log_summary(
    sent_id: np.ndarray,
    texts: Sequence[str],
    ids: np.ndarray,
    ptr: np.ndarray,
    truncated: np.ndarray,
    tokenizer: PreTrainedTokenizerBase,
    limit: int,
) -> None:
    """Log lengths, truncations, empty expressions and unknown tokens."""
    lengths = np.diff(ptr)
    log.info(
        "%d expressions, %d tokens (mean %.2f, max %d with [CLS]/[SEP])",
        len(texts),
        len(ids),
        lengths.mean(),
        lengths.max(),
    )
    log.info(
        "%d expressions exceed the model's limit of %d tokens and were truncated",
        int(truncated.sum()),
        limit,
    )
    empty = [int(s) for s, t in zip(sent_id, texts, strict=True) if not t.strip()]
    if empty:
        log.warning(
            "%d empty or whitespace-only expressions, kept as [CLS] [SEP]: sent_id %s",
            len(empty),
            empty[:10],
        )
    unknown = np.add.reduceat((ids == tokenizer.unk_token_id).astype(np.int64), ptr[:-1])
    if unknown.any():
        log.info("%d expressions contain [UNK] tokens", int(np.count_nonzero(unknown)))


def write_tokens(table: TokenTable, path: Path) -> None:
    """Write ``table`` to HDF5 atomically (layout in docs/architecture.md)."""
    text_dtype = h5py.string_dtype()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("sent_id", data=table.sent_id)
        f.create_dataset("split", data=table.split.astype(object), dtype=text_dtype)
        f.create_dataset("text", data=table.text.astype(object), dtype=text_dtype)
        f.create_dataset("input_ids/ids", data=table.ids)
        f.create_dataset("input_ids/ptr", data=table.ptr)
        f.attrs.update(table.attrs)


def read_tokens(path: Path) -> TokenTable:
    """Read a file written by ``write_tokens``.

    Raises:
        UserError: ``path`` is missing, not HDF5, or not a tokens file (another step's output);
            the message names it and ``rsis tokenize``.
    """
    with open_hdf5(path, writer="rsis tokenize") as f:
        require_members(
            f, TOKENS_DATASETS, TOKENS_ATTRS, kind="a tokens file", writer="rsis tokenize"
        )
        return TokenTable(
            sent_id=f["sent_id"][:],
            split=f["split"].asstr()[:],
            text=f["text"].asstr()[:],
            ids=f["input_ids/ids"][:],
            ptr=f["input_ids/ptr"][:],
            attrs=plain_attrs(f.attrs),
        )


def _tokenize_command(args: argparse.Namespace) -> None:
    """Tokenize every expression of every split of one dataset."""
    refer = refer_from_args(args)
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    table = tokenize_sentences(
        refer.sentences(),
        tokenizer,
        tokenizer_identity(args.model, tokenizer),
        max_length(source, tokenizer),
    )
    table.attrs.update(dataset=args.dataset, split_by=args.split_by, refs_root=str(args.refs_root))
    write_tokens(table, args.out)
    log.info("wrote %s", args.out)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis tokenize``."""
    parser = add_command(subparsers, "tokenize")
    add_refer_arguments(parser)
    parser.add_argument("--model", required=True, help="minilm, a model directory, or a hub id")
    parser.add_argument("--out", type=output_file, required=True, help="tokens.h5 to write")
    parser.set_defaults(func=_tokenize_command)
