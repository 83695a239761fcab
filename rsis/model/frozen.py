"""A frozen encoder: batch-norm calibration and a digest of its weights.

A frozen encoder runs in eval mode, so its batch norms normalise with their running
statistics. Those must describe the images it will see: a randomly initialised ResNet's are
the defaults (mean 0, variance 1), so ``calibrate_batch_norm`` estimates them first.
``encoder_digest`` names the exact weights, so features computed once can be checked
against the model that reads them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

from rsis.model.backbone import ResNetEncoder
from rsis.progress import progress_bar


@torch.no_grad()
def calibrate_batch_norm(encoder: ResNetEncoder, batches: Iterable[torch.Tensor]) -> int:
    """Set every batch norm's running statistics to their average over ``batches``.

    Each batch norm's running mean and variance become the plain average of the batch
    statistics (momentum ``None``), so the result depends only on the images and their
    order, not on where the statistics started. The encoder is left in eval mode.

    Args:
        encoder: the ResNet to calibrate (its weights are not changed).
        batches: raw RGB images (B, 3, H, W), uint8 or float in 0..1.

    Returns:
        The number of images seen.
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    encoder.train()
    seen = 0
    try:
        for images in progress_bar(batches, desc="calibrate batch norm", unit="batch", leave=False):
            encoder.encode_images(images)
            seen += len(images)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        encoder.eval()
    if seen == 0:
        raise ValueError("batch-norm calibration needs at least one batch of images")
    return seen


def encoder_digest(encoder: nn.Module) -> str:
    """SHA-256 over the encoder's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in encoder.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
