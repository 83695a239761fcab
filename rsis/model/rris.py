"""The RRIS model: ResNet encoder, text projection, recurrent ConvLSTM mask decoder."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rsis.errors import UserError
from rsis.fields import KIND_NAMES
from rsis.model.backbone import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, build_backbone
from rsis.model.decoder import RecurrentMaskDecoder, decoder_channels
from rsis.model.frozen import encoder_digest
from rsis.model.resize import BilinearResize
from rsis.model.text import TextProjection, projected_dim
from rsis.runs import DECODERS, PAPER_DECODER
from rsis.text.pca import PcaSolution


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` stored channels_last: the 3x3 convolutions with few channels at the finest scale
    (the head's 1 output channel above all) run several times faster so on CPU (oneDNN)."""
    return x.contiguous(memory_format=torch.channels_last)


def input_spec(cache_attrs: typing.Mapping[str, object]) -> dict[str, object]:
    """What the model expects as input, stored with it (like timm's ``pretrained_cfg``).

    Args:
        cache_attrs: attributes of the split cache it trains on (``height``, ``width``).

    Returns:
        ``image_size`` (height, width) of the network input; ``mean`` and ``std`` of the
        normalisation ``forward`` applies to RGB pixels in 0..1.
    """
    return {
        "image_size": [int(cache_attrs["height"]), int(cache_attrs["width"])],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines an RRIS model; stored in checkpoints and bundles.

    Attributes:
        backbone: ResNet depth, one of ``BACKBONES``.
        weights: where the encoder starts: ``imagenet``, ``none`` or a state_dict file.
            Not part of the architecture.
        hidden: H; skip projections have H, H, H/2, H/4, H/8 channels (coarse to fine).
        text_dim: size of the embeddings given to the model.
        text_transform: ``none``, ``pca``, ``linear`` or ``linear_pca``.
        proj_dim: output size of a learned text projection (unset for ``none``/``pca``).
        decoder: ``paper``, or ``coord`` (ours: x, y channels at every scale); one of
            ``DECODERS``. Checkpoints written before it existed hold the paper's.
    """

    backbone: str = "resnet101"
    weights: str = "imagenet"
    hidden: int = 128
    text_dim: int = 768
    text_transform: str = "none"
    proj_dim: int | None = None
    decoder: str = PAPER_DECODER

    def __post_init__(self) -> None:
        for field, kind in typing.get_type_hints(ModelConfig).items():
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, kind):
                wanted = KIND_NAMES.get(kind, f"of type {kind}")  # int | None: as written
                raise UserError(f"model setting {field}={value!r} is not {wanted}")
        if self.backbone not in BACKBONES:
            raise UserError(
                f"unknown backbone {self.backbone!r}: use one of {', '.join(BACKBONES)}"
            )
        if self.decoder not in DECODERS:
            raise UserError(f"model decoder {self.decoder!r}: use one of {DECODERS}")
        decoder_channels(self.hidden)
        projected_dim(self.text_transform, self.text_dim, self.proj_dim)

    def to_dict(self) -> dict[str, object]:
        """Plain dict of the settings (JSON/YAML/checkpoint friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ModelConfig:
        """Build from a dict; missing settings take their defaults, unknown ones are errors."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown model setting(s) {unknown}: known are {sorted(known)}")
        return cls(**data)


ENCODER_PREFIX = "encoder."  # state-dict keys of the ResNet


class RRIS(nn.Module):
    """Recurrent referring instance segmentation: one mask per expression, in order.

    Args:
        backbone: ResNet depth (``resnet18/34/50/101``).
        weights: encoder start: ``imagenet``, ``none`` or the path of a state_dict file.
        hidden: decoder width H.
        text_dim: size of the embeddings passed to ``forward``.
        text_transform: ``none``, ``pca``, ``linear`` or ``linear_pca``.
        proj_dim: output size of a learned text projection.
        decoder: ``paper`` or ``coord`` (``ModelConfig.decoder``).
        pca: the PCA solution a ``linear_pca`` projection starts from; leave it
            unset only when a state dict is loaded next.
    """

    def __init__(
        self,
        *,
        backbone: str = ModelConfig.backbone,
        weights: str | Path = ModelConfig.weights,
        hidden: int = ModelConfig.hidden,
        text_dim: int = ModelConfig.text_dim,
        text_transform: str = ModelConfig.text_transform,
        proj_dim: int | None = ModelConfig.proj_dim,
        decoder: str = ModelConfig.decoder,
        pca: PcaSolution | None = None,
    ) -> None:
        super().__init__()
        self.config = ModelConfig(
            backbone=backbone,
            weights=str(weights),
            hidden=hidden,
            text_dim=text_dim,
            text_transform=text_transform,
            proj_dim=proj_dim,
            decoder=decoder,
        )
        self.encoder = build_backbone(backbone, str(weights))
        self.text = TextProjection(text_transform, text_dim, proj_dim)
        if pca is not None:
            self.text.load_pca(pca)
        self.decoder = RecurrentMaskDecoder(
            self.encoder.channels, self.text.out_dim, hidden, coordinates=decoder != PAPER_DECODER
        )
        self.encoder_frozen = False
        self.checkpointed_steps = False  # see ``checkpoint_activations``

    @classmethod
    def from_config(
        cls,
        cfg: Mapping[str, object] | ModelConfig,
        *,
        weights: str | Path | None = None,
        pca: PcaSolution | None = None,
    ) -> RRIS:
        """Build from a config dict (or ``ModelConfig``).

        Args:
            cfg: model settings, see ``ModelConfig``.
            weights: overrides ``cfg["weights"]``, e.g. ``none`` before loading a checkpoint.
            pca: the PCA solution a fresh ``linear_pca`` model starts from.
        """
        config = cfg if isinstance(cfg, ModelConfig) else ModelConfig.from_dict(cfg)
        settings = config.to_dict()
        if weights is not None:
            settings["weights"] = str(weights)
        return cls(**settings, pca=pca)

    def checkpoint_activations(self) -> None:
        """Activation checkpointing in training: the encoder keeps only its blocks' outputs
        (``ResNetEncoder.checkpoint_blocks``) and each decoder step only its state; the
        backward pass recomputes the rest (one more forward pass). Same gradients."""
        self.encoder.checkpoint_blocks()
        self.checkpointed_steps = True

    def freeze_encoder(self) -> None:
        """Freeze the ResNet as a fixed function of the image: no gradients, and eval mode
        (running batch-norm statistics) whatever ``train()`` is called with. Its features then
        depend on the image alone and can be computed once (``rsis features``)."""
        self.encoder.requires_grad_(False)
        self.encoder_frozen = True
        self.encoder.eval()

    def rebuilds_encoder(self) -> bool:
        """Whether ``weights`` alone rebuilds the encoder: frozen and loaded from a file or
        ImageNet (a random one, ``none``, is calibrated in training and must be stored)."""
        return self.encoder_frozen and self.config.weights != "none"

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What a training checkpoint keeps: the state dict, less an encoder that ``weights``
        rebuilds (45 MB for ResNet-18, per checkpoint; ``encoder_digest`` stands for it)."""
        state = self.state_dict()
        if not self.rebuilds_encoder():
            return state
        return {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIX)}

    def load_trained_state(
        self, state: Mapping[str, torch.Tensor], digest: str | None, source: Path
    ) -> None:
        """Load ``trained_state`` output. ``digest``: ``encoder_digest`` of the encoder left out
        of ``state`` (None: ``state`` holds it); this model's encoder must have those weights."""
        if digest is None:
            self.load_state_dict(state)
            return
        if encoder_digest(self.encoder) != digest:
            raise UserError(
                f"{source} was trained on the frozen encoder {self.config.weights}, which now "
                "holds other weights: restore the file it was trained with, or retrain"
            )
        missing, unexpected = self.load_state_dict(state, strict=False)
        foreign = unexpected + [k for k in missing if not k.startswith(ENCODER_PREFIX)]
        if foreign:
            raise UserError(f"{source}: weights do not fit this model (keys {foreign[:5]})")

    def train(self, mode: bool = True) -> RRIS:
        """Set training mode; a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the ResNet (the low learning rate group)."""
        return self.encoder.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the text projection, skip projections, ConvLSTMs and head."""
        yield from self.text.parameters()
        yield from self.decoder.parameters()

    def forward(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        valid: torch.Tensor | None = None,
        features: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Predict one mask per referent.

        Each step runs only on the sequences that still have a valid slot at it or later: the
        batch is taken longest first (and put back in its order at the end), so those are its
        first rows and the ended ones cost nothing.

        Args:
            images: (B, 3, H, W), uint8 in 0..255 or float in 0..1 (RGB, not normalised).
            text: expression embeddings (B, R, text_dim), in referent order.
            valid: (B, R) bool; False marks padded slots, whose step leaves the decoder
                state unchanged when a valid slot follows; their logits are meaningless
                (0 after a sequence's last valid slot).
            features: the encoder's output for ``images`` computed beforehand (``rsis
                features``); the encoder is then skipped. Only for a frozen encoder.

        Returns:
            Mask logits (B, R, H, W) (in the autocast dtype under autocast).
        """
        batch, steps = text.shape[:2]
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != batch:
            raise ValueError(f"images {tuple(images.shape)} must be (B, 3, H, W) with B={batch}")
        if text.ndim != 3 or steps < 1 or text.shape[2] != self.config.text_dim:
            raise ValueError(f"text {tuple(text.shape)} must be (B, R>=1, {self.config.text_dim})")
        if valid is not None and valid.shape != (batch, steps):
            raise ValueError(f"valid {tuple(valid.shape)} must be (B, R) = {(batch, steps)}")
        if features is not None and not self.encoder_frozen:
            raise ValueError("precomputed features need a frozen encoder (freeze_encoder())")
        if valid is None:
            valid = torch.ones(batch, steps, dtype=torch.bool, device=text.device)
        order, live = _longest_first(valid)
        if order is not None:
            if features is None:
                images = images[order]
            else:
                features = [x[order] for x in features]
            text, valid = text[order], valid[order]
        if features is None:
            features = self.encoder.encode_images(images)
        skips = self.decoder.project(features)
        prepared = self.decoder.prepare(skips, self.text(text))
        state = None  # the zero state: the first step convolves none of it
        padded = _steps_to_mask(valid)
        finest = []
        for t, rows in enumerate(live):
            new_state = self._step(prepared, t, state, rows)
            finest.append(new_state[-1][0])
            if padded[t]:
                keep = valid[:rows, t].view(rows, 1, 1, 1)
                zero = new_state[0][0].new_zeros(())
                old = [(zero, zero)] * len(new_state)
                if state is not None:
                    old = [(h0[:rows], c0[:rows]) for h0, c0 in state]
                new_state = [
                    (torch.where(keep, h, h0), torch.where(keep, c, c0))
                    for (h, c), (h0, c0) in zip(new_state, old, strict=True)
                ]
            state = new_state
        logits = self._logits(finest, batch, steps, skips[-1])
        if order is not None:
            logits = logits[torch.argsort(order)]
        return BilinearResize(logits.shape[-2:], images.shape[-2:], logits)(logits)

    def _logits(
        self, finest: list[torch.Tensor], batch: int, steps: int, like: torch.Tensor
    ) -> torch.Tensor:
        """(B, R, h, w) logits of the finest states of every step (step t's of its first
        rows), 0 where a sequence had ended; the head is per-pixel linear and independent of
        the step, so one call computes every step's."""
        logits = like.new_zeros(batch, steps, *like.shape[-2:])
        if not finest:
            return logits
        heads = self.decoder.head(channels_last(torch.cat(finest)))[:, 0]
        for t, head in enumerate(heads.split([len(h) for h in finest])):
            logits[: len(head), t] = head
        return logits

    def _step(self, *args: typing.Any) -> typing.Any:
        """``decoder.step(*args)``, checkpointed when enabled and a backward pass will need it
        (the step holds no batch norm: recomputing it changes no state)."""
        if self.checkpointed_steps and self.training and torch.is_grad_enabled():
            return checkpoint(self.decoder.step, *args, use_reentrant=False)
        return self.decoder.step(*args)


def _longest_first(valid: torch.Tensor) -> tuple[torch.Tensor | None, list[int]]:
    """The batch's sequences in order of their last valid slot, latest first, and per step
    how many of them have a valid slot there or later (the rows that take the step; steps
    after every sequence's last are dropped).

    Returns:
        The permutation (None when the batch is in that order already) and the rows per step.
    """
    steps = valid.shape[1]
    position = torch.arange(1, steps + 1, device=valid.device)
    ends = (valid * position).amax(1)  # 1 + the last valid slot's index; 0 for none
    ordered, order = torch.sort(ends, descending=True, stable=True)
    live = (ordered[None, :] > torch.arange(steps, device=valid.device)[:, None]).sum(1)
    live = [rows for rows in live.tolist() if rows]
    in_order = bool((ends[1:] <= ends[:-1]).all())
    return (None if in_order else order), live


def _steps_to_mask(valid: torch.Tensor) -> list[bool]:
    """Per step, whether a padded slot there must leave its sequence's state unchanged:
    only when a valid slot of the same sequence comes later (after a sequence's last valid
    slot its state is never read again). One host-side check per sequence."""
    later = valid.flip(1).cumsum(1).flip(1) > 0  # a valid slot at this step or after
    return (~valid & later).any(0).tolist()
