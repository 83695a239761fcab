"""Text projection: how an expression embedding reaches the decoder."""

from __future__ import annotations

import torch
from torch import nn

from rsis.errors import UserError
from rsis.runs import LEARNED_TRANSFORMS, TEXT_TRANSFORMS
from rsis.text.pca import PcaSolution


def projected_dim(mode: str, in_dim: int, out_dim: int | None) -> int:
    """Check a text transform and its sizes; return the size the decoder receives.

    ``none`` and ``pca`` pass the embedding through (PCA was applied upstream, by
    ``rsis reduce``), so ``out_dim`` must be unset or equal ``in_dim``. ``linear`` and
    ``linear_pca`` learn an ``nn.Linear(in_dim, out_dim)`` and need ``out_dim``.

    Args:
        mode: one of ``TEXT_TRANSFORMS``.
        in_dim: size of the embeddings given to the model.
        out_dim: size after the projection (``proj_dim`` in the model config).
    """
    if mode not in TEXT_TRANSFORMS:
        raise UserError(f"unknown text_transform {mode!r}: use one of {', '.join(TEXT_TRANSFORMS)}")
    if in_dim < 1 or (out_dim is not None and out_dim < 1):
        raise UserError(f"text_dim ({in_dim}) and proj_dim ({out_dim}) must be positive")
    if mode in LEARNED_TRANSFORMS:
        if out_dim is None:
            raise UserError(f"text_transform {mode!r} needs proj_dim (the learned output size)")
        return out_dim
    if out_dim is not None and out_dim != in_dim:
        raise UserError(
            f"text_transform {mode!r} uses the embedding as given ({in_dim} dims), so proj_dim "
            f"must be unset or {in_dim}, not {out_dim}"
        )
    return in_dim


class TextProjection(nn.Module):
    """Identity (``none``, ``pca``) or a learned linear layer (``linear``, ``linear_pca``).

    Args:
        mode: one of ``TEXT_TRANSFORMS``.
        in_dim: size of the input embeddings.
        out_dim: output size of a learned projection.
    """

    def __init__(self, mode: str, in_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.out_dim = projected_dim(mode, in_dim, out_dim)
        self.linear = nn.Linear(in_dim, self.out_dim) if mode in LEARNED_TRANSFORMS else None

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Project (..., in_dim) embeddings to (..., out_dim)."""
        return text if self.linear is None else self.linear(text)

    @torch.no_grad()
    def load_pca(self, pca: PcaSolution) -> None:
        """Start the linear layer at a PCA solution: it then computes the PCA projection."""
        if self.linear is None:
            raise UserError(f"text_transform {self.mode!r} has no linear layer to start from PCA")
        shapes = (tuple(pca.components.shape), tuple(pca.mean.shape))
        if shapes != (tuple(self.linear.weight.shape), (self.linear.in_features,)):
            raise UserError(
                f"PCA components {shapes[0]} and mean {shapes[1]} do not fit the text "
                f"projection {tuple(self.linear.weight.shape)} (out_dim, in_dim): use a "
                "reduced file made from the same embeddings, with proj_dim components"
            )
        weight, bias = pca.affine()
        self.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        self.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
