"""``rsis evaluate``: score a trained checkpoint on one split with the paper's protocol."""

from __future__ import annotations

import argparse
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsis.breakdowns import sample_labels
from rsis.checkpoint import load_trained_model
from rsis.cli import add_command, positive_int, seed_int
from rsis.cpu import add_threads_argument, use_threads
from rsis.data.cache import EXPRESSIONS, SequenceDataset, resize_mask
from rsis.data.cache_file import SplitCache
from rsis.data.refer import Refer, add_refer_arguments, refer_from_args
from rsis.device import add_device_argument, resolve_device
from rsis.errors import UserError
from rsis.features import FeatureStore
from rsis.inference import make_loader, predict_batches
from rsis.io import atomic_path, missing_folders, require_writable_folder, undo_on_failure
from rsis.metrics import MetricAccumulator, resize_scores, write_metrics_json
from rsis.model import RRIS
from rsis.model.frozen import encoder_digest
from rsis.predictions import Predictions, encode_masks, save_predictions
from rsis.protocols import PROTOCOLS, Protocol, get_protocol
from rsis.runs import RunSpec
from rsis.score import encode_rle, write_predictions_json
from rsis.text import EmbeddingTable
from rsis.text.identity import text_identity

log = logging.getLogger(__name__)


def run_description(payload: dict) -> dict[str, object]:
    """The run's grid coordinates, its id as ``name``, its seed and the text model's own size."""
    run = RunSpec.from_dict(payload["run"])
    extra = {
        "name": run.id,
        "seed": payload["settings"]["seed"],
        "text_dim": payload["text"]["dim"],
    }
    return run.to_dict() | extra


def _ground_truth(refer: Refer | None, cache: SplitCache) -> dict[int, np.ndarray]:
    """ref_id -> ground-truth mask at the original image size (decoded from the dataset)."""
    if refer is None:
        raise UserError("scoring at the original size or 480x480 needs --refs-root and --dataset")
    pairs = zip(cache.ref_id.tolist(), cache.ann_id.tolist(), strict=True)
    return {ref_id: refer.decode_mask(ann_id) for ref_id, ann_id in pairs}


def evaluate(
    model: RRIS,
    payload: dict,
    cache: Path,
    text: EmbeddingTable,
    *,
    expression: str,
    order: str = "dataset",
    seed: int = 0,
    batch_size: int = 8,
    protocol: Protocol = PROTOCOLS["rsis"],
    refer: Refer | None = None,
    features: FeatureStore | None = None,
) -> tuple[MetricAccumulator, dict, Predictions, list[tuple[int, int, dict]]]:
    """Predict every referent of a split and score it under ``protocol``.

    Under ``expression="all"`` the split is fed ``max sentences per referent`` times: pass k
    gives every referent its k-th sentence (wrapping around for referents with fewer, so every
    sequence keeps its referents), and scores sentence k only where the referent has one.
    Every sentence is then scored exactly once.

    Args:
        model: the trained model (``load_trained_model``), on its device.
        payload: its checkpoint.
        cache: the split's cache file.
        text: the embeddings the model was trained with.
        expression: ``first`` (the paper's protocol), ``random`` (seeded) or ``all``.
        order: referents fed in ``dataset`` order, or ``reverse`` (the paper's Fig. 4).
        seed: seed of the random expression choice.
        batch_size: sequences per forward pass.
        protocol: resolution, binarisation and scoring rules; its sentences are ``expression``.
        refer: the dataset; needed where the protocol scores at the original size or 480x480.
        features: the split's stored encoder features (model frozen); None runs the encoder.

    Returns:
        The accumulator (samples keyed by sent_id), the checkpoint payload, the scored masks
        at the network's resolution in the order they were fed, and (sent_id, ref_id, RLE at
        the original image size) of every scored sample (``rsis score``'s input).
    """
    if expression not in EXPRESSIONS:
        raise UserError(f"--expression must be one of {EXPRESSIONS}, got {expression!r}")
    if order not in ("dataset", "reverse"):
        raise UserError(f"--order must be dataset or reverse, got {order!r}")
    protocol = protocol.with_overrides(sentences=expression)
    target = next(model.parameters()).device
    dataset = SequenceDataset(
        cache,
        text,
        order=order,
        expression=expression,
        max_referents=payload["settings"]["max_referents"],
        seed=seed,
    )
    split_cache = dataset.cache
    split, network_hw = split_cache.split, split_cache.size
    image_hw = [tuple(hw) for hw in split_cache.image_hw.tolist()]
    counts = np.diff(split_cache.sent_ptr).tolist()
    sentences = dict(zip(split_cache.ref_id.tolist(), counts, strict=True))
    full_size = None if protocol.resolution == "network" else _ground_truth(refer, split_cache)
    threshold = protocol.logit_threshold
    conventions = protocol.conventions(network_hw)
    accumulator = MetricAccumulator(
        resolution=conventions["resolution"], threshold=conventions["threshold"], protocol=protocol
    )
    fed: dict[str, list] = {"ref_id": [], "sent_id": [], "rle": []}
    original: list[tuple[int, int, dict]] = []
    passes = dataset.passes() if expression == "all" else 1
    for sentence_pass in range(passes):
        dataset.set_pass(sentence_pass)
        desc = f"evaluate {cache.stem}" + (f" pass {sentence_pass + 1}/{passes}" * (passes > 1))
        loader = make_loader(dataset, batch_size)
        for batch, logits in predict_batches(model, loader, target, desc, features):
            valid = batch["valid"]
            refs = batch["ref_id"][valid]
            keep = torch.tensor([sentence_pass < sentences[r] for r in refs.tolist()])
            scores, refs = logits[valid][keep], refs[keep]
            sent_ids = batch["sent_id"][valid][keep]
            rows = batch["image_row"][:, None].expand_as(valid)[valid][keep]
            for score, ref_id, sent_id, row in zip(scores, refs, sent_ids, rows, strict=True):
                hw = image_hw[int(row)]
                mask = resize_scores(score[None], hw)[0] > threshold
                original.append((int(sent_id), int(ref_id), encode_rle(mask.cpu().numpy())))
                if full_size is not None:
                    size = protocol.size(network_hw, hw)
                    pred = mask if size == hw else resize_scores(score[None], size)[0] > threshold
                    truth = full_size[int(ref_id)]
                    truth = truth if size == hw else resize_mask(truth, *size)
                    gt = torch.from_numpy(truth).to(pred.device)
                    accumulator.update(pred[None], gt[None], ids=[sent_id], ref_ids=[ref_id])
            if full_size is None:
                gt = batch["masks"][valid][keep]
                accumulator.update(scores > threshold, gt, ids=sent_ids, ref_ids=refs)
            fed["ref_id"] += refs.tolist()
            fed["sent_id"] += sent_ids.tolist()
            fed["rle"] += encode_masks(scores > threshold)
    predictions = Predictions(
        ref_id=np.asarray(fed["ref_id"], np.int64),
        sent_id=np.asarray(fed["sent_id"], np.int64),
        rles=fed["rle"],
        attrs={"split": split, "order": order, "expression": expression},
    )
    return accumulator, payload, predictions, original


def _feature_stores(
    model: RRIS, caches: list[Path], features: list[Path] | None
) -> list[FeatureStore | None]:
    """One store per cache from ``--features`` (same order), or None each to run the encoder."""
    if not features:
        return [None] * len(caches)
    if len(features) != len(caches):
        raise UserError(
            f"--features needs one file per --cache ({len(caches)}), got {len(features)}"
        )
    model.freeze_encoder()
    digest = encoder_digest(model.encoder)
    return [FeatureStore(path, cache, digest) for path, cache in zip(features, caches, strict=True)]


def output_stem(out_dir: Path, split: str, expression: str, order: str) -> Path:
    """``<out_dir>/<split>~<expression>`` (``~reverse`` appended for the inverse order)."""
    return out_dir / (f"{split}~{expression}" + ("~reverse" if order == "reverse" else ""))


def require_input_size(checkpoint: Path, payload: dict, caches: list[SplitCache]) -> None:
    """Refuse, before scoring anything, a cache prepared at another size than the model's
    input (``payload["input"]["image_size"]``, the size of the cache it trained on)."""
    trained = tuple(payload["input"]["image_size"])
    for cache in caches:
        if cache.size != trained:
            raise UserError(
                f"{cache.path} holds {cache.size[0]}x{cache.size[1]} images but {checkpoint} "
                f"was trained at {trained[0]}x{trained[1]}: prepare the split at the model's "
                "size (rsis prepare --height/--width)"
            )


OUTPUT_SUFFIXES = (".json", ".csv", ".predictions.h5", ".predictions.json")


def _require_output_files(args: argparse.Namespace, caches: list[SplitCache]) -> None:
    """Refuse, before anything is evaluated, an output file name that a folder holds."""
    for cache, expression in itertools.product(caches, args.expression):
        stem = output_stem(args.out_dir, cache.split, expression, args.order)
        for path in (stem.with_suffix(suffix) for suffix in OUTPUT_SUFFIXES):
            if path.is_dir():
                raise UserError(
                    f"{path} is a folder where rsis evaluate writes a file: remove it or give "
                    "another --out-dir"
                )


def _write_per_sample(path: Path, accumulator: MetricAccumulator) -> None:
    """The per-sample table (``.csv``)."""
    with atomic_path(path) as tmp:
        table = accumulator.per_referent().rename(columns={"id": "sent_id"})
        table.to_csv(tmp, index=False)


def _write_evaluation(
    stem: Path,
    record: dict[str, Any],
    accumulator: MetricAccumulator,
    predictions: Predictions,
    original: list[tuple[int, int, dict]],
    written: list[Path],
) -> None:
    """Write one evaluation's files at ``stem`` (``OUTPUT_SUFFIXES``), naming each in
    ``written`` once it is written.

    Args:
        record: ``write_metrics_json``'s arguments after the path.
    """
    writers: tuple[Callable[[Path], object], ...] = (
        lambda path: write_metrics_json(path, **record),
        lambda path: _write_per_sample(path, accumulator),
        lambda path: save_predictions(path, predictions),
        lambda path: write_predictions_json(path, original),
    )
    for suffix, write in zip(OUTPUT_SUFFIXES, writers, strict=True):
        write(stem.with_suffix(suffix))
        written.append(stem.with_suffix(suffix))


def _metrics_record(
    args: argparse.Namespace, payload: dict, cache: SplitCache, expression: str, summary: dict
) -> dict[str, Any]:
    """``write_metrics_json``'s arguments (after the path) for one evaluation."""
    return {
        "summary": summary,
        "run": run_description(payload),
        "split": cache.split,
        "expression": expression,
        "dataset": cache.dataset,
        "text_model": payload["text"]["model"],
        "backbone": payload["model_config"]["backbone"],
        "image_size": cache.size,
        "feed_order": args.order,
    }


def _log_metrics(record: dict[str, Any], protocol: Protocol) -> None:
    """One line of an evaluation's headline numbers."""
    metrics = record["summary"]["metrics"]
    log.info(
        "%s %s (%s expression, protocol %s): instance IoU %.4f, overall IoU %.4f over "
        "%d samples (%d referents)",
        record["dataset"],
        record["split"],
        record["expression"],
        protocol.name,
        metrics["instance_iou"],
        metrics["overall_iou"],
        metrics["n_samples"],
        metrics["n_referents"],
    )


def _evaluate_command(args: argparse.Namespace) -> None:
    require_writable_folder(args.out_dir, f"--out-dir {args.out_dir}")
    split_caches = [SplitCache(cache) for cache in args.cache]
    _require_output_files(args, split_caches)
    use_threads(args.threads)
    protocol = get_protocol(args.protocol)
    if args.original_size:
        protocol = protocol.with_overrides(resolution="original")
    refer = refer_from_args(args) if args.refs_root else None
    text = EmbeddingTable.load(args.text)
    model, payload = load_trained_model(args.checkpoint, text_identity(text))
    model.to(resolve_device(args.device))
    require_input_size(args.checkpoint, payload, split_caches)
    stores = _feature_stores(model, args.cache, args.features)
    # All or nothing: a failure removes every file this command wrote (and the folders it made).
    with undo_on_failure(missing_folders(args.out_dir)) as written:
        for cache, split_cache, features in zip(args.cache, split_caches, stores, strict=True):
            for expression in args.expression:
                accumulator, payload, predictions, original = evaluate(
                    model,
                    payload,
                    cache,
                    text,
                    expression=expression,
                    order=args.order,
                    seed=args.seed,
                    batch_size=args.batch_size,
                    protocol=protocol,
                    refer=refer,
                    features=features,
                )
                groups = sample_labels(refer, accumulator.per_referent()["id"]) if refer else {}
                summary = accumulator.summary(groups)
                record = _metrics_record(args, payload, split_cache, expression, summary)
                stem = output_stem(args.out_dir, split_cache.split, expression, args.order)
                _write_evaluation(stem, record, accumulator, predictions, original, written)
                _log_metrics(record, protocol)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis evaluate``."""
    p = add_command(subparsers, "evaluate")
    p.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (.pt)")
    p.add_argument("--cache", type=Path, nargs="+", required=True, help="split caches (.h5)")
    p.add_argument("--text", type=Path, required=True, help="embeddings the model trained with")
    p.add_argument(
        "--features", type=Path, nargs="+", help="stored encoder features, one per --cache"
    )
    p.add_argument(
        "--expression",
        nargs="+",
        default=["first"],
        choices=EXPRESSIONS,
        help="first (the paper's protocol), random (seeded) and/or all (every sentence once)",
    )
    p.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="rsis",
        help="scoring rules: rsis, lavt, cris or rela (docs/metrics.md)",
    )
    p.add_argument(
        "--order",
        default="dataset",
        choices=("dataset", "reverse"),
        help="dataset, or reverse (paper's Fig. 4)",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random expression choice")
    p.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="writes <split>~<expression>.json (metrics), .csv (per sample), .predictions.h5 "
        "(network-size masks) and .predictions.json (rsis score's input, original size)",
    )
    add_device_argument(p)
    add_threads_argument(p)
    p.add_argument(
        "--batch-size", type=positive_int, default=8, help="images per batch (default %(default)s)"
    )
    p.add_argument(
        "--original-size",
        action="store_true",
        help="score at the original image size, whatever the protocol's resolution",
    )
    # Category names and sentences for the breakdowns, and the masks at the original size.
    add_refer_arguments(p, required=False)
    p.set_defaults(func=_evaluate_command)
