"""ConvLSTM cell with a vector condition tiled over every pixel of its input."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rsis.model.resize import BilinearResize, is_channels_last

# maps of at least this many pixels go channels_last into the recurrent convolution: on CPU,
# oneDNN's forward and backward of these few-channel convolutions run up to 2x faster so
FINE_MAP_PIXELS = 200


@dataclass(frozen=True)
class PreparedCell:
    """What a ``ConvLSTMCell`` computes once per sequence (``ConvLSTMCell.prepare``).

    Attributes:
        fixed: the fixed map's gate pre-activations with the bias (B, 4S, H, W).
        text: per step, each kernel tap's response to the condition (B, 4S, k*k).
        taps: 0/1 masks of the kernel taps that fall inside the image (k*k, H*W).
        weight: the gate weight's ``[step, h]`` input channels, sliced once per sequence.
        resize: brings the step map to this scale (None when there is no step map).
    """

    fixed: torch.Tensor
    text: tuple[torch.Tensor, ...]
    taps: torch.Tensor
    weight: torch.Tensor
    resize: BilinearResize | None

    def first_rows(self, rows: int) -> PreparedCell:
        """The same for the first ``rows`` sequences of the batch only (views, no copies)."""
        if rows == self.fixed.shape[0]:
            return self
        return dataclasses.replace(self, fixed=self.fixed[:rows])

    def base(self, t: int) -> torch.Tensor:
        """Step ``t``'s gate pre-activations that do not depend on the state (B, 4S, H, W),
        in ``fixed``'s memory format: ``fixed + text[t] @ taps`` per image (B: the rows of
        ``fixed``, which ``first_rows`` may have cut)."""
        batch, channels, height, width = self.fixed.shape
        step_text = self.text[t][:batch]
        if is_channels_last(self.fixed):  # (B, H*W, 4S) in memory
            fixed = self.fixed.permute(0, 2, 3, 1).flatten(1, 2)
            taps = self.taps.T.expand(batch, -1, -1)
            base = torch.baddbmm(fixed, taps, step_text.transpose(1, 2))
            return base.view(batch, height, width, channels).permute(0, 3, 1, 2)
        text = step_text.reshape(batch * channels, -1)
        base = torch.addmm(self.fixed.view(batch * channels, -1), text, self.taps)
        return base.view(self.fixed.shape)


class ConvLSTMCell(nn.Module):
    """ConvLSTM cell (Shi et al. 2015) as in RSIS: one convolution produces the four gates.

    The convolution reads ``[fixed, step, h, tile(cond)]``: a feature map that stays the same
    for every step (the skip feature), one that changes (the state of the scale above, resized
    to this scale; may have no channels), the previous hidden state, and a vector (the
    expression embedding) repeated at every pixel. The parameters are one ``Conv2d`` over that
    concatenation, but the convolution is computed in parts, which is exact since it is
    linear in its input:

    - ``prepare`` computes, once per sequence, what does not depend on the recurrent state:
      the fixed map's part (with the bias), every step's per-tap responses to the condition
      (the tiled map is never built: a convolution of a spatially constant map equals, per
      output pixel, the sum over the kernel taps inside the image of ``W_tap @ cond``), and
      the slice of the weight that ``forward`` convolves.
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
        self.step_channels = step_channels
        self.split = fixed_channels + step_channels + hidden_channels
        self.gates = nn.Conv2d(
            self.split + cond_channels,
            4 * hidden_channels,
            kernel_size,
            padding=kernel_size // 2,
        )

    def prepare(
        self, fixed: torch.Tensor, cond: torch.Tensor, resize: BilinearResize | None = None
    ) -> PreparedCell:
        """The gate parts of the fixed map, the bias and the condition, for every step.

        Args:
            fixed: the map that is the same at every step (B, fixed_channels, H, W).
            cond: one condition vector per step (B, R, cond_channels).
            resize: brings the step map given to ``forward`` to (H, W); None without one.
        """
        # one split (its backward joins the parts' gradients once, no zero-filled copies),
        # and a contiguous copy of the recurrent part that every step's convolution reuses
        own_weight, weight, text_weight = self.gates.weight.split(
            [self.fixed, self.split - self.fixed, cond.shape[-1]], dim=1
        )
        own = F.conv2d(fixed, own_weight, self.gates.bias, padding=self.gates.padding)
        text = torch.einsum("ocn,brc->rbon", text_weight.flatten(2), cond)
        return PreparedCell(
            fixed=own,
            text=text.unbind(0),
            taps=tap_masks(weight.shape[-1], own.shape[-2:], own),
            weight=weight.contiguous(),
            resize=resize,
        )

    def forward(
        self,
        prepared: PreparedCell,
        t: int,
        step: torch.Tensor | None,
        state: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``t``; returns the new ``(h, c)``.

        Args:
            prepared: this sequence's ``prepare``.
            t: the step's index.
            step: the map that changes per step, before ``prepared.resize``, or None.
            state: previous ``(h, c)``, each (B, hidden_channels, H, W); None for the zero
                state before the first step.
        """
        if step is not None:
            step = prepared.resize(step)
        if state is None:
            inputs, weight = step, prepared.weight[:, : self.step_channels]
        else:
            h = state[0]
            inputs = h if step is None else torch.cat([step, h], dim=1)
            weight = prepared.weight
        gates = prepared.base(t)
        if inputs is not None:
            if inputs.shape[-1] * inputs.shape[-2] >= FINE_MAP_PIXELS:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            gates = gates + F.conv2d(inputs, weight, padding=self.gates.padding)
        return LSTMUpdate.apply(gates, None if state is None else state[1])


class LSTMUpdate(torch.autograd.Function):
    """The LSTM's pointwise update from its gate pre-activations, with a hand-written backward.

    ``i, f, o = sigmoid(gates[:3S])``, ``g = tanh(gates[3S:])``, ``c = f * c_prev + i * g``,
    ``h = o * tanh(c)``, as autograd would compute it, but the backward writes the four gates'
    gradients into one tensor (no slicing or chunking of the pre-activations to undo: those
    cost a zero-filled full-size gradient and a copy per slice) and keeps only
    ``sigmoid(i, f, o)``, ``g``, ``tanh(c)`` and ``c_prev``. ``c_prev=None`` is the zero state.
    """

    @staticmethod
    def forward(ctx, gates: torch.Tensor, c_prev: torch.Tensor | None):
        ctx.set_materialize_grads(False)
        hidden = gates.shape[1] // 4
        sig = torch.sigmoid(gates[:, : 3 * hidden])
        g = torch.tanh(gates[:, 3 * hidden :])
        in_gate, forget_gate, out_gate = sig.chunk(3, dim=1)
        c = in_gate * g
        if c_prev is not None:
            c = c.addcmul_(forget_gate, c_prev)
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(sig, g, tanh_c, c_prev)
        return out_gate * tanh_c, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: torch.Tensor | None, grad_c: torch.Tensor | None):
        if grad_h is None and grad_c is None:
            return None, None
        sig, g, tanh_c, c_prev = ctx.saved_tensors
        in_gate, forget_gate, out_gate = sig.chunk(3, dim=1)
        grad_sig = torch.empty_like(sig)
        grad_in, grad_forget, grad_out = grad_sig.chunk(3, dim=1)
        if grad_h is None:
            grad_out.zero_()
            grad_cell = grad_c
        else:
            torch.mul(grad_h, tanh_c, out=grad_out)
            grad_cell = torch.ops.aten.tanh_backward(grad_h * out_gate, tanh_c)
            if grad_c is not None:
                grad_cell += grad_c
        torch.mul(grad_cell, g, out=grad_in)
        if c_prev is None:
            grad_forget.zero_()
        else:
            torch.mul(grad_cell, c_prev, out=grad_forget)
        grad_gates = g.new_empty((g.shape[0], 4 * g.shape[1], *g.shape[2:]))
        split = 3 * g.shape[1]
        torch.ops.aten.sigmoid_backward.grad_input(grad_sig, sig, grad_input=grad_gates[:, :split])
        torch.ops.aten.tanh_backward.grad_input(
            grad_cell * in_gate, g, grad_input=grad_gates[:, split:]
        )
        grad_prev = None
        if c_prev is not None and ctx.needs_input_grad[1]:
            grad_prev = grad_cell * forget_gate
        return grad_gates, grad_prev


def tap_masks(k: int, size: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """(k*k, H*W) 0/1 masks: tap n of a k x k kernel (zero padding k // 2) centred on pixel p
    falls inside the (H, W) image."""
    taps = torch.eye(k * k, dtype=like.dtype, device=like.device).view(k * k, 1, k, k)
    return F.conv2d(like.new_ones(1, 1, *size), taps, padding=k // 2)[0].flatten(1)


def tiled_conv2d(cond: torch.Tensor, weight: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``conv2d(cond tiled to size, weight)`` with zero padding, as (B, O, H, W).

    Output pixel p gets ``sum over taps n inside the image of W_n @ cond``: a matrix
    product of the per-tap responses (B, O, k*k) with the 0/1 tap masks (k*k, H*W).

    Args:
        cond: vectors (B, C) to tile over every pixel.
        weight: convolution weight (O, C, k, k), k odd, padding k // 2.
        size: output (H, W).
    """
    responses = torch.einsum("ocn,bc->bon", weight.flatten(2), cond)
    inside = tap_masks(weight.shape[-1], size, cond)
    return (responses @ inside).view(*responses.shape[:2], *size)
