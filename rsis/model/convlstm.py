"""ConvLSTM cell with a vector condition tiled over every pixel of its input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvLSTMCell(nn.Module):
    """ConvLSTM cell (Shi et al. 2015) as in RSIS: one convolution produces the four gates.

    The convolution reads ``[fixed, step, h, tile(cond)]``: a feature map that stays the same
    for every step (the skip feature), one that changes (the upsampled state of the scale
    above; may have no channels), the previous hidden state, and a vector (the expression
    embedding) repeated at every pixel. The parameters are one ``Conv2d`` over that
    concatenation, but the convolution is computed in parts, which is exact since it is
    linear in its input:

    - ``prepare`` computes, once per sequence, what does not depend on the recurrent state:
      the fixed map's part (with the bias) and every step's tiled-condition part. The tiled
      part is never built: a convolution of a spatially constant map equals, per output pixel,
      the sum over the kernel taps inside the image (zero padding) of ``W_tap @ cond``.
    - ``forward`` adds, per step, the convolution of ``[step, h]``. At the first step the
      state is zero (``state=None``): only the ``step`` part is convolved (nothing at all
      where there is none) and the forget gate has nothing to keep, which skips exactly the
      products with zeros.

    Args:
        fixed_channels: channels of the map that is the same at every step.
        step_channels: channels of the map that changes from step to step (0 for none).
        cond_channels: size of the condition vector.
        hidden_channels: channels of the hidden and cell states.
        kernel_size: odd kernel size of the gate convolution.
    """

    def __init__(
        self,
        fixed_channels: int,
        step_channels: int,
        cond_channels: int,
        hidden_channels: int,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.fixed = fixed_channels
        self.split = fixed_channels + step_channels + hidden_channels
        self.gates = nn.Conv2d(
            self.split + cond_channels,
            4 * hidden_channels,
            kernel_size,
            padding=kernel_size // 2,
        )

    def prepare(self, fixed: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Gate pre-activations of the fixed map, the bias and the condition, for every step.

        Args:
            fixed: the map that is the same at every step (B, fixed_channels, H, W).
            cond: one condition vector per step (B, R, cond_channels).

        Returns:
            (B, R, 4 * hidden_channels, H, W).
        """
        weight = self.gates.weight
        own = F.conv2d(fixed, weight[:, : self.fixed], self.gates.bias, padding=self.gates.padding)
        batch, steps = cond.shape[:2]
        tiled = tiled_conv2d(cond.flatten(0, 1), weight[:, self.split :], own.shape[-2:])
        return own.unsqueeze(1) + tiled.view(batch, steps, *own.shape[1:])

    def forward(
        self,
        prepared: torch.Tensor,
        step: torch.Tensor | None,
        state: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; returns the new ``(h, c)``.

        Args:
            prepared: this step's slice of ``prepare`` (B, 4 * hidden_channels, H, W).
            step: the map that changes per step (B, step_channels, H, W), or None.
            state: previous ``(h, c)``, each (B, hidden_channels, H, W); None for the zero
                state before the first step.
        """
        hidden = self.hidden_channels
        if state is None:
            gates = prepared
            if step is not None:
                weight = self.gates.weight[:, self.fixed : self.split - hidden]
                gates = gates + F.conv2d(step, weight, padding=self.gates.padding)
        else:
            h = state[0]
            recurrent = h if step is None else torch.cat([step, h], dim=1)
            weight = self.gates.weight[:, self.fixed : self.split]
            gates = prepared + F.conv2d(recurrent, weight, padding=self.gates.padding)
        in_gate, forget_gate, out_gate = torch.sigmoid(gates[:, : 3 * hidden]).chunk(3, dim=1)
        c = in_gate * torch.tanh(gates[:, 3 * hidden :])
        if state is not None:
            c = forget_gate * state[1] + c
        h = out_gate * torch.tanh(c)
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
