"""``rsis evaluate``: score a trained checkpoint on one split with the paper's protocol."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from rsis.checkpoint import load_checkpoint, require_compatible
from rsis.cli import add_command
from rsis.data.cache import EXPRESSIONS, SequenceDataset
from rsis.data.cache_file import SplitCache
from rsis.data.refer import add_refer_arguments, refer_from_args
from rsis.errors import UserError
from rsis.inference import (
    add_threads_argument,
    make_loader,
    predict_batches,
    resolve_device,
    use_threads,
)
from rsis.io import atomic_path
from rsis.metrics import MetricAccumulator, resize_scores, write_metrics_json
from rsis.model import RRIS, ModelConfig
from rsis.predictions import Predictions, encode_masks, save_predictions
from rsis.runs import RunSpec
from rsis.text import EmbeddingTable
from rsis.text.identity import text_identity

log = logging.getLogger(__name__)


def load_model(checkpoint: Path, text: EmbeddingTable) -> tuple[RRIS, dict]:
    """Rebuild a trained model (no pretrained download) and check it matches ``text``."""
    payload = load_checkpoint(checkpoint)
    config = ModelConfig.from_dict(payload["model_config"])
    require_compatible(checkpoint, payload, config.to_dict(), text_identity(text))
    model = RRIS.from_config(config, weights="none")
    model.load_state_dict(payload["model"])
    return model, payload


def run_description(payload: dict) -> dict[str, object]:
    """The run's grid coordinates, its id as ``name``, its seed and the text model's own size."""
    run = RunSpec.from_dict(payload["run"])
    extra = {
        "name": run.id,
        "seed": payload["settings"]["seed"],
        "text_dim": payload["text"]["dim"],
    }
    return run.to_dict() | extra


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
    original_masks: dict[int, np.ndarray] | None = None,
) -> tuple[MetricAccumulator, dict, Predictions]:
    """Predict every referent of a split and score it.

    Args:
        model: the trained model (``load_model``), on its device.
        payload: its checkpoint.
        cache: the split's cache file.
        text: the embeddings the model was trained with.
        expression: ``first`` (the paper's protocol) or ``random`` (seeded).
        order: referents fed in ``dataset`` order, or ``reverse`` (the paper's Fig. 4).
        seed: seed of the random expression choice.
        batch_size: sequences per forward pass.
        original_masks: ann_id -> mask at the original image size; when given, predictions
            are upsampled to that size before scoring.

    Returns:
        The accumulator, the checkpoint payload, and the predicted masks at the network's
        resolution, in the order the referents were fed.
    """
    if expression not in EXPRESSIONS:
        raise UserError(f"--expression must be one of {EXPRESSIONS}, got {expression!r}")
    if order not in ("dataset", "reverse"):
        raise UserError(f"--order must be dataset or reverse, got {order!r}")
    target = next(model.parameters()).device
    dataset = SequenceDataset(
        cache,
        text,
        order=order,
        expression=expression,
        max_referents=payload["settings"]["max_referents"],
        seed=seed,
    )
    ann_of_ref = dict(
        zip(dataset.cache.ref_id.tolist(), dataset.cache.ann_id.tolist(), strict=True)
    )
    split = dataset.cache.split
    resolution = "original image size" if original_masks is not None else "network input"
    accumulator = MetricAccumulator(resolution=resolution)
    ref_ids: list[int] = []
    sent_ids: list[int] = []
    rles: list[dict] = []
    loader = make_loader(dataset, batch_size)
    for batch, logits in predict_batches(model, loader, target, desc=f"evaluate {cache.stem}"):
        valid = batch["valid"]
        scores, refs = logits[valid], batch["ref_id"][valid]
        if original_masks is None:
            accumulator.update(scores > 0, batch["masks"][valid], ids=refs)
        else:
            for ref_id, score in zip(refs.tolist(), scores, strict=True):
                gt = torch.from_numpy(original_masks[ann_of_ref[ref_id]]).to(score.device)
                full = resize_scores(score[None], tuple(gt.shape))
                accumulator.update(full > 0, gt[None], ids=[ref_id])
        ref_ids += refs.tolist()
        sent_ids += batch["sent_id"][valid].tolist()
        rles += encode_masks(scores > 0)
    predictions = Predictions(
        ref_id=np.asarray(ref_ids, np.int64),
        sent_id=np.asarray(sent_ids, np.int64),
        rles=rles,
        attrs={"split": split, "order": order, "expression": expression},
    )
    return accumulator, payload, predictions


def _original_masks(args: argparse.Namespace, cache: Path) -> dict[int, np.ndarray] | None:
    if not args.original_size:
        return None
    if not args.refs_root:
        raise UserError("--original-size needs --refs-root, --dataset and --split-by")
    refer = refer_from_args(args)
    return {int(a): refer.decode_mask(int(a)) for a in SplitCache(cache).ann_id}


def output_stem(out_dir: Path, split: str, expression: str, order: str) -> Path:
    """``<out_dir>/<split>~<expression>`` (``~reverse`` appended for the inverse order)."""
    return out_dir / (f"{split}~{expression}" + ("~reverse" if order == "reverse" else ""))


def _evaluate_command(args: argparse.Namespace) -> None:
    use_threads(args.threads)
    text = EmbeddingTable.load(args.text)
    model, payload = load_model(args.checkpoint, text)
    model.to(resolve_device(args.device))
    for cache in args.cache:
        split_cache = SplitCache(cache)
        original = _original_masks(args, cache)
        for expression in args.expression:
            accumulator, payload, predictions = evaluate(
                model,
                payload,
                cache,
                text,
                expression=expression,
                order=args.order,
                seed=args.seed,
                batch_size=args.batch_size,
                original_masks=original,
            )
            stem = output_stem(args.out_dir, split_cache.split, expression, args.order)
            record = write_metrics_json(
                stem.with_suffix(".json"),
                accumulator.summary(),
                run=run_description(payload),
                split=split_cache.split,
                expression=expression,
                dataset=split_cache.dataset,
                text_model=payload["text"]["model"],
                backbone=payload["model_config"]["backbone"],
                image_size=split_cache.size,
            )
            with atomic_path(stem.with_suffix(".csv")) as tmp:
                table = accumulator.per_referent().rename(columns={"id": "ref_id"})
                table.to_csv(tmp, index=False)
            save_predictions(stem.with_suffix(".predictions.h5"), predictions)
            metrics = record["metrics"]
            log.info(
                "%s %s (%s expression): instance IoU %.4f, overall IoU %.4f over %d referents",
                split_cache.dataset,
                split_cache.split,
                expression,
                metrics["instance_iou"],
                metrics["overall_iou"],
                metrics["n_referents"],
            )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis evaluate``."""
    p = add_command(subparsers, "evaluate")
    p.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (.pt)")
    p.add_argument("--cache", type=Path, nargs="+", required=True, help="split caches (.h5)")
    p.add_argument("--text", type=Path, required=True, help="embeddings the model trained with")
    p.add_argument(
        "--expression",
        nargs="+",
        default=["first"],
        choices=EXPRESSIONS,
        help="first (the paper's protocol) and/or random (seeded)",
    )
    p.add_argument("--order", default="dataset", help="dataset, or reverse (paper's Fig. 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random expression choice")
    p.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="writes <split>~<expression>.json (metrics), .csv (per referent), .predictions.h5",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_threads_argument(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--original-size", action="store_true", help="score at the original image size")
    add_refer_arguments(p, required=False)  # with --original-size: where the masks come from
    p.set_defaults(func=_evaluate_command)
