"""ConvLSTM cell with a vector condition tiled over every pixel of its input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvLSTMCell(nn.Module):
    """ConvLSTM cell (Shi et al. 2015) as in RSIS: one convolution produces the four gates.

    The convolution reads ``[x, h, tile(cond)]``: the feature map, the previous hidden
    state and a vector (the expression embedding) repeated at every pixel. The tiled part is
    computed without building the tiled tensor: a convolution of a spatially constant
    map equals, per output pixel, the sum over the kernel taps that fall inside the image
    (zero padding) of ``W_tap @ cond``. The result equals the plain concatenation (up to
    float rounding) at a fraction of the compute and activation memory.

    Args:
        in_channels: channels of the feature input ``x``.
        cond_channels: size of the condition vector.
        hidden_channels: channels of the hidden and cell states.
        kernel_size: odd kernel size of the gate convolution.
    """

    def __init__(
        self, in_channels: int, cond_channels: int, hidden_channels: int, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.split = in_channels + hidden_channels
        self.gates = nn.Conv2d(
            self.split + cond_channels,
            4 * hidden_channels,
            kernel_size,
            padding=kernel_size // 2,
        )

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; returns the new ``(h, c)``.

        Args:
            x: features (B, in_channels, H, W).
            cond: condition vectors (B, cond_channels).
            state: previous ``(h, c)``, each (B, hidden_channels, H, W).
        """
        h, c = state
        weight = self.gates.weight
        gates = F.conv2d(
            torch.cat([x, h], dim=1),
            weight[:, : self.split],
            self.gates.bias,
            padding=self.gates.padding,
        )
        gates = gates + tiled_conv2d(cond, weight[:, self.split :], gates.shape[-2:])
        in_gate, forget_gate, out_gate, cell_gate = gates.chunk(4, dim=1)
        c = torch.sigmoid(forget_gate) * c + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
        h = torch.sigmoid(out_gate) * torch.tanh(c)
        return h, c


def tiled_conv2d(cond: torch.Tensor, weight: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``conv2d(cond tiled to size, weight)`` with zero padding, as (B, O, H, W).

    Output pixel p gets ``sum over taps n inside the image of W_n @ cond``: a matrix
    product of the per-tap responses (B, O, k*k) with the 0/1 tap masks (k*k, H, W).

    Args:
        cond: vectors (B, C) to tile over every pixel.
        weight: convolution weight (O, C, k, k), k odd, padding k // 2.
        size: output (H, W).
    """
    k = weight.shape[-1]
    taps = torch.eye(k * k, dtype=cond.dtype, device=cond.device).view(k * k, 1, k, k)
    inside = F.conv2d(cond.new_ones(1, 1, *size), taps, padding=k // 2)[0]
    responses = torch.einsum("ocn,bc->bon", weight.flatten(2), cond)
    return torch.einsum("bon,nhw->bohw", responses, inside)
