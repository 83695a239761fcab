"""Recurrent multi-scale mask decoder: skip projections, one ConvLSTM per scale, a logit head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rsis.errors import UserError
from rsis.model.convlstm import ConvLSTMCell, PreparedCell
from rsis.model.resize import BilinearResize, is_channels_last

State = list[tuple[torch.Tensor, torch.Tensor]]


def decoder_channels(hidden: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Channels of the skip projections and of the ConvLSTM states, coarse to fine (as RSIS).

    Skips: H, H, H/2, H/4, H/8 for layer4, layer3, layer2, layer1, conv1.
    ConvLSTM states: H, H/2, H/4, H/8, H/16 at the same scales.

    Args:
        hidden: H, a positive multiple of 16.
    """
    if hidden < 16 or hidden % 16:
        raise UserError(f"model hidden size must be a positive multiple of 16, not {hidden}")
    skips = (hidden, hidden, hidden // 2, hidden // 4, hidden // 8)
    return skips, (*skips[1:], hidden // 16)


COORDINATE_CHANNELS = 2  # x, y


def coordinate_maps(like: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) maps of each pixel's x (channel 0) and y (channel 1), from -1 at the
    first column or row to 1 at the last, with ``like``'s batch, size, dtype and layout."""
    batch, _, height, width = like.shape
    ys = torch.linspace(-1.0, 1.0, height, dtype=like.dtype, device=like.device)
    xs = torch.linspace(-1.0, 1.0, width, dtype=like.dtype, device=like.device)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W): x, then y
    return grid.expand(batch, -1, -1, -1).contiguous(memory_format=_layout(like))


def skip_projection(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution + batch norm, no ReLU (as RSIS's ``sk*``/``bn*`` pairs)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels)
    )


class RecurrentMaskDecoder(nn.Module):
    """Turns encoder features and one expression embedding per step into mask logits.

    At scale i (coarse to fine) the ConvLSTM input is the skip feature, the hidden state of
    scale i-1 upsampled to this scale (none at the coarsest) and the embedding tiled over every
    pixel. Each scale's ``(h, c)`` carries over from one referent to the next.

    Args:
        feature_channels: encoder channels, fine to coarse (conv1, layer1, ..., layer4).
        text_dim: size of the expression embedding at the decoder.
        hidden: H of ``decoder_channels``.
        coordinates: ours, not the paper's: two more channels join every skip feature, each
            pixel's x and y in -1..1 (CoordConv, Liu et al. 2018), so that the gates can tell
            left from right ("the leftmost star").
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        text_dim: int,
        hidden: int,
        coordinates: bool = False,
    ) -> None:
        super().__init__()
        skip_channels, state_channels = decoder_channels(hidden)
        coarse_to_fine = tuple(reversed(feature_channels))
        self.skips = nn.ModuleList(
            skip_projection(c_in, c_out)
            for c_in, c_out in zip(coarse_to_fine, skip_channels, strict=True)
        )
        self.coordinates = coordinates
        extra = COORDINATE_CHANNELS if coordinates else 0
        below = (0, *state_channels[:-1])  # channels of the upsampled state from the scale above
        self.cells = nn.ModuleList(
            ConvLSTMCell(c_skip + extra, c_up, text_dim, c_state)
            for c_skip, c_up, c_state in zip(skip_channels, below, state_channels, strict=True)
        )
        self.head = nn.Conv2d(state_channels[-1], 1, 3, padding=1)

    def project(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Skip projections of the encoder features (fine to coarse in), coarse to fine out;
        with ``coordinates``, each followed by its x and y channels."""
        skips = [skip(x) for skip, x in zip(self.skips, reversed(features), strict=True)]
        if not self.coordinates:
            return skips
        return [torch.cat([skip, coordinate_maps(skip)], dim=1) for skip in skips]

    def prepare(self, skips: Sequence[torch.Tensor], text: torch.Tensor) -> list[PreparedCell]:
        """Per scale, what does not depend on the recurrent state (``ConvLSTMCell.prepare``),
        with the resizing of the scale above's state to this scale.

        Args:
            skips: projected features, coarse to fine (from ``project``).
            text: every step's embeddings (B, R, text_dim).
        """
        prepared = []
        for i, (cell, skip) in enumerate(zip(self.cells, skips, strict=True)):
            resize = None
            if i:
                resize = BilinearResize(skips[i - 1].shape[-2:], skip.shape[-2:], skip)
            prepared.append(cell.prepare(skip, text, resize))
        return prepared

    def initial_state(self, skips: Sequence[torch.Tensor]) -> State:
        """Zero ``(h, c)`` per scale, shaped like the skips and with their dtype and layout."""
        state = []
        for cell, skip in zip(self.cells, skips, strict=True):
            zeros = skip.new_zeros(
                skip.shape[0], cell.hidden_channels, *skip.shape[-2:]
            ).contiguous(memory_format=_layout(skip))
            state.append((zeros, zeros))
        return state

    def step(
        self, prepared: Sequence[PreparedCell], t: int, state: State | None, rows: int
    ) -> State:
        """Decode referent ``t`` of the first ``rows`` sequences: their new state per scale.

        Args:
            prepared: this batch's ``prepare``, coarse to fine.
            t: the referent's index.
            state: ``(h, c)`` per scale after the previous referent, of at least ``rows``
                sequences (the first ``rows`` are used); None before the first (the zero
                state, equal to ``initial_state`` but never convolved).
            rows: how many sequences, from the first, take this step (the batch's others
                have ended).
        """
        new_state: State = []
        h = None
        previous = [None] * len(self.cells) if state is None else state
        for cell, ready, prev in zip(self.cells, prepared, previous, strict=True):
            if prev is not None:
                prev = (prev[0][:rows], prev[1][:rows])
            h, c = cell(ready.first_rows(rows), t, h, prev)
            new_state.append((h, c))
        return new_state


def _layout(x: torch.Tensor) -> torch.memory_format:
    """channels_last if ``x`` is stored that way, else contiguous."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format
