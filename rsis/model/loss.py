"""Soft IoU loss (RSIS, paper eq. 1), per referent, padded slots excluded."""

from __future__ import annotations

import torch

EPS = 1e-6


def soft_iou(logits: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Soft IoU ``(sum(p*y) + eps) / (sum(p + y - p*y) + eps)``, p = sigmoid(logits).

    Sums run over the last two (spatial) dimensions, in float32 whatever the input dtype;
    ``eps`` (as RSIS) makes an empty target predicted empty score 1 instead of 0/0.

    Args:
        logits: (..., H, W) mask logits.
        target: (..., H, W) 0/1 masks (any dtype).
    """
    p = torch.sigmoid(logits.float())
    y = target.float()
    intersection = (p * y).sum(dim=(-2, -1))
    union = (p + y - p * y).sum(dim=(-2, -1))
    return (intersection + eps) / (union + eps)


def soft_iou_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``1 - soft_iou`` over the valid referents of the batch (each counts once).

    Args:
        logits: (B, R, H, W) mask logits.
        target: (B, R, H, W) 0/1 masks.
        valid: (B, R) bool, False for padded slots; all slots count when omitted.
    """
    loss = 1 - soft_iou(logits, target)
    if valid is None:
        return loss.mean()
    if not bool(valid.any()):
        raise ValueError("soft_iou_loss needs at least one valid referent")
    return loss[valid].mean()
