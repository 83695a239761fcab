"""Running a model over a SequenceDataset: autocast and batching in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from rsis.data.cache import collate_sequences
from rsis.features import FeatureStore
from rsis.progress import progress_bar


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (the training and evaluation precision there); no-op on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a collated batch; images go channels_last on CUDA."""
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if device.type == "cuda":
        moved["image"] = moved["image"].contiguous(memory_format=torch.channels_last)
    return moved


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    workers: int = 0,
    shuffle_generator: torch.Generator | None = None,
    sampler: torch.utils.data.Sampler | None = None,
) -> DataLoader:
    """DataLoader over sequences; shuffles only when given a generator (reproducible order)."""
    if sampler is None and shuffle_generator is not None:
        sampler = torch.utils.data.RandomSampler(dataset, generator=shuffle_generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_sequences,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def stored_features(
    store: FeatureStore | None, batch: dict[str, torch.Tensor], device: torch.device
) -> list[torch.Tensor] | None:
    """The batch's precomputed encoder features, or None to run the encoder."""
    return None if store is None else store.batch(batch["image_row"], device)


@torch.inference_mode()
def predict_batches(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    desc: str = "predict",
    features: FeatureStore | None = None,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Yield ``(batch on device, float32 logits (B, R, H, W))`` for every batch, model in eval.

    With ``features`` (the split's stored encoder features) the encoder is not run.
    """
    was_training = model.training
    model.eval()
    try:
        for batch in progress_bar(loader, desc=desc, unit="batch", leave=False):
            batch = to_device(batch, device)
            with autocast(device):
                logits = model(
                    batch["image"],
                    batch["text"],
                    batch["valid"],
                    features=stored_features(features, batch, device),
                )
            yield batch, logits.float()
    finally:
        model.train(was_training)
