"""ResNet image encoder: torchvision ResNet truncated before pooling, five feature maps."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

from rsis.errors import UserError

log = logging.getLogger(__name__)

BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101")
STAGES: tuple[str, ...] = ("conv1", "layer1", "layer2", "layer3", "layer4")  # features, in order
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "a torchvision ResNet state_dict file (torch.save), 'imagenet' or 'none'"


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without ``avgpool`` and ``fc``.

    Module names match torchvision's, so a torchvision ResNet state dict (``fc.*`` aside)
    loads into this encoder and the other way round.

    Args:
        net: a torchvision ``ResNet``; its layers are taken over, ``avgpool``/``fc`` dropped.
    """

    def __init__(self, net: torchvision.models.ResNet) -> None:
        super().__init__()
        layers = (net.layer1, net.layer2, net.layer3, net.layer4)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        # blocks after the first keep the channel count: the last one's input is the output
        self.channels: tuple[int, ...] = (
            net.conv1.out_channels,
            *(layer[-1].conv1.in_channels for layer in layers),
        )
        self.strides: tuple[int, ...] = (2, 4, 8, 16, 32)
        self.checkpointed = False  # activation checkpointing (``checkpoint_blocks``)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    def encode_images(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Features of raw RGB images: uint8 in 0..255 or float in 0..1, normalised here
        with the ImageNet mean and std (the convention of torchvision's weights).

        Args:
            images: (B, 3, H, W).
        """
        pixels = images.float() / 255 if images.dtype == torch.uint8 else images
        return self((pixels - self.pixel_mean) / self.pixel_std)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the features of conv1 (after BN + ReLU), layer1, layer2, layer3, layer4.

        Args:
            x: normalised images (B, 3, H, W).
        """
        c1, x = self._run(self._stem, x, self.bn1)
        features = [c1]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = self._run(block, x, block)
            features.append(x)
        return features

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """conv1 + BN + ReLU (the first feature map) and its max pooling (layer1's input)."""
        c1 = self.relu(self.bn1(self.conv1(x)))
        return c1, self.maxpool(c1)

    def checkpoint_blocks(self) -> None:
        """Activation checkpointing: in training, keep only the output of the stem and of
        each residual block, and recompute a block's inner activations when the backward
        pass reaches it (one more forward pass of the encoder; without it ResNet-101 keeps
        5.6 GB of activations for a batch of 16 at 240x427). Gradients and batch-norm running
        statistics equal those of a run without it: the recomputation does not update the
        statistics.
        """
        self.checkpointed = True

    def _run(self, part: Callable[[torch.Tensor], Any], x: torch.Tensor, norms: nn.Module) -> Any:
        """``part(x)``, checkpointed when enabled and a backward pass will need it.

        Args:
            norms: the module holding ``part``'s batch norms.
        """
        if not (self.checkpointed and self.training and torch.is_grad_enabled()):
            return part(x)
        return checkpoint(
            part,
            x,
            use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), _frozen_statistics(norms)),
        )


@contextlib.contextmanager
def _frozen_statistics(module: nn.Module) -> Iterator[None]:
    """Batch norm in ``module`` runs as in training (the batch's statistics, the same saved
    tensors), and its running statistics are put back afterwards: the recomputation of a
    checkpointed part must not update them a second time."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [[buffer.clone() for buffer in norm.buffers()] for norm in norms]
    try:
        yield
    finally:
        for norm, buffers in zip(norms, saved, strict=True):
            for buffer, value in zip(norm.buffers(), buffers, strict=True):
                buffer.copy_(value)


def build_backbone(name: str = "resnet101", weights: str = "imagenet") -> ResNetEncoder:
    """Build a ResNet encoder and load its starting weights.

    Args:
        name: one of ``BACKBONES``.
        weights: ``imagenet`` (torchvision's default ImageNet weights, from the torch hub cache
            ``$TORCH_HOME/hub/checkpoints`` or downloaded), ``none`` (random initialisation),
            or the path of a torchvision ResNet state dict saved with ``torch.save``.
    """
    return encoder_with(name, backbone_weights(name, weights), weights)


def encoder_with(name: str, state: dict[str, torch.Tensor] | None, source: str) -> ResNetEncoder:
    """A ``name`` encoder holding ``state``, as ``backbone_weights`` gives it (None: random
    initialisation); ``source`` names the weights in the log."""
    encoder = ResNetEncoder(torchvision.models.get_model(name, weights=None))
    if state is not None:
        encoder.load_state_dict(state)
        log.info("loaded backbone weights from %s", source)
    return encoder


def backbone_weights(name: str, weights: str) -> dict[str, torch.Tensor] | None:
    """The state dict that ``weights`` (as ``build_backbone`` takes it) gives a ``name``
    encoder, its classifier (``fc.*``) dropped; None for ``none``. A command calls it first
    to refuse bad weights before longer work.

    Raises:
        UserError: an unknown backbone, or weights that cannot be read or do not fit it
            (naming the depth they fit, when they fit one); one line.
    """
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}: use one of {', '.join(BACKBONES)}")
    if weights == "none":
        return None
    if weights == "imagenet":
        state, source = _imagenet_state(name), f"torchvision ImageNet weights for {name}"
    else:
        state, source = _file_state(Path(weights)), str(weights)
    state = {k: v for k, v in state.items() if not (isinstance(k, str) and k.startswith("fc."))}
    mismatch = _mismatch(name, state)
    if mismatch:
        fits = next((other for other in BACKBONES if not _mismatch(other, state)), "")
        why = f"they are {fits} weights" if fits else mismatch
        other = f", or --backbone {fits}" if fits else ""
        raise UserError(
            f"backbone weights {source} do not fit {name}: {why}; give a torchvision {name} "
            f"state_dict{other}"
        )
    return state


def _imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """Fetch torchvision's default ImageNet weights, as a user-facing error when offline."""
    entry = torchvision.models.get_model_weights(name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
    try:
        return entry.get_state_dict(progress=False)
    except OSError as error:  # URLError, HTTPError, socket errors: no network
        raise UserError(
            f"ImageNet weights for {name} ({entry}) are not in the torch hub cache and could "
            f"not be downloaded ({error}). Put {entry.url} at {cached} (set TORCH_HOME to use "
            "another cache), or set the model weights to a local state_dict file, or to 'none' "
            "for a randomly initialised encoder."
        ) from error
    except RuntimeError as error:  # a truncated or corrupt file in the cache
        raise UserError(
            f"cannot read the cached ImageNet weights {cached} ({error}): delete the file "
            "and fetch it again."
        ) from error


def _file_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict saved with ``torch.save`` (tensors and plain data only)."""
    from rsis.checkpoint import read_torch_file  # rsis.checkpoint imports rsis.model

    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"backbone weights file {path} {problem}: give {WEIGHTS_FILE}")
    state = read_torch_file(path, f"backbone weights {path}", WEIGHTS_FILE)
    if not isinstance(state, dict):
        raise UserError(
            f"backbone weights {path} hold a {type(state).__name__}, not a state_dict: "
            f"give {WEIGHTS_FILE}"
        )
    return state


def _mismatch(name: str, state: dict[str, torch.Tensor]) -> str:
    """Why ``state`` (no ``fc.*``) does not load into a ``name`` encoder, "" when it does
    (checked on the meta device: no memory, no initialisation)."""
    from rsis.checkpoint import state_mismatch  # rsis.checkpoint imports rsis.model

    with torch.device("meta"):
        encoder = ResNetEncoder(torchvision.models.get_model(name, weights=None))
    return state_mismatch(encoder, state)
