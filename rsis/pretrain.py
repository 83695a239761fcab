"""``rsis pretrain``: the demo's stand-in for ImageNet, a ResNet trained on generated scenes.

No ImageNet weights are available offline, and a frozen random ResNet reads colour but not
shape. So the demo's encoder is trained once on a dense pretext task on generated scenes of
its own (``rsis.data.pretext``: never a train, val or test picture), then frozen like the
paper's ImageNet encoder. Every stage (conv1, layer1..layer4) gets a linear 1x1 head whose
logits, upsampled to the input size, classify every pixel: object or background (all
pixels), and on object pixels only its shape, colour and size. Keeping background out of the
attribute heads lets a pixel near an edge say which shape it belongs to. The summed
cross-entropies are minimised with AdamW and a one-cycle schedule, with random horizontal
flips. Finally the batch-norm statistics are set to their average over the pretext scenes
(``calibrate_batch_norm``), since the encoder will run in eval mode.

``--epochs 0`` skips the training: the result is a random ResNet (seeded) with calibrated
batch norms, the baseline the probe compares with.
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from rsis.cli import (
    add_command,
    learning_rate,
    non_negative_int,
    output_file,
    positive_int,
    seed_int,
)
from rsis.cpu import add_threads_argument, use_threads
from rsis.data.demo.writer import add_scene_arguments, rules_from_args
from rsis.data.pretext import PRETRAIN_STREAM, TASKS, LabelledScenes, render_scenes
from rsis.errors import UserError
from rsis.io import atomic_path
from rsis.model.backbone import BACKBONES, ResNetEncoder, build_backbone
from rsis.model.frozen import calibrate_batch_norm
from rsis.progress import progress_bar

log = logging.getLogger(__name__)

# Outputs per head: object/background, then every task's values (background excluded).
HEAD_OUTPUTS: tuple[int, ...] = (2, *(len(values) for values in TASKS.values()))
CALIBRATION_BATCH = 64  # scenes per batch when the batch-norm statistics are calibrated


class PretextHeads(nn.Module):
    """One linear 1x1 convolution per encoder stage, predicting every pixel's labels.

    Args:
        channels: the encoder's channels per stage.
    """

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv2d(c, sum(HEAD_OUTPUTS), 1) for c in channels)

    def loss(self, features: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropies of every stage and task.

        Args:
            features: the encoder's stages.
            labels: (B, len(TASKS), H, W) maps from ``render_scenes``.
        """
        foreground = labels[:, 0] > 0
        total = labels.new_zeros((), dtype=torch.float32)
        for head, x in zip(self.heads, features, strict=True):
            logits = F.interpolate(
                head(x), size=labels.shape[-2:], mode="bilinear", align_corners=False
            )
            objectness, *tasks = logits.split(HEAD_OUTPUTS, dim=1)
            total = total + F.cross_entropy(objectness, foreground.long())
            for task, task_logits in enumerate(tasks):
                chosen = task_logits.permute(0, 2, 3, 1)[foreground]
                if len(chosen):  # no object pixel in the batch (a tiny input): nothing to learn
                    total = total + F.cross_entropy(chosen, labels[:, task][foreground] - 1)
        return total


def pretrain_encoder(
    encoder: ResNetEncoder,
    scenes: LabelledScenes,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[float]:
    """Train ``encoder`` on the pretext task, then calibrate its batch norms on ``scenes``.

    Returns:
        The mean loss of every epoch.
    """
    heads = PretextHeads(encoder.channels)
    steps = epochs * -(-len(scenes) // batch_size)
    params = [*encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        encoder.train()
        order = torch.randperm(len(scenes), generator=generator)
        losses = []
        bar = progress_bar(order.split(batch_size), desc=f"pretrain epoch {epoch}", unit="batch")
        for rows in bar:
            images, labels = scenes.images[rows], scenes.labels[rows]
            flip = torch.rand(len(rows), generator=generator) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
            labels = torch.where(flip.view(-1, 1, 1, 1), labels.flip(-1), labels)
            loss = heads.loss(encoder.encode_images(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(_finite(loss.item(), epoch, lr))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        history.append(sum(losses) / len(losses))
        log.info("pretrain epoch %d: loss %.4f", epoch, history[-1])
    calibrate_batch_norm(encoder, scenes.images.split(CALIBRATION_BATCH))
    return history


def _finite(loss: float, epoch: int, lr: float) -> float:
    """``loss``, refused where it is nan or infinite (the learning rate is too high)."""
    if not math.isfinite(loss):
        raise UserError(
            f"the pretraining loss became {loss} in epoch {epoch}: lower --lr (now {lr:g}); "
            "no encoder was written"
        )
    return loss


def batch_sizes(count: int, batch_size: int) -> set[int]:
    """Sizes of the batches that ``count`` scenes make, ``batch_size`` at a time."""
    return {min(count, batch_size), count % batch_size or batch_size}


def check_batch_of_one(
    encoder: ResNetEncoder, input_size: tuple[int, int], sizes: set[int], counts: str
) -> None:
    """Refuse batches of ``sizes`` that batch norm cannot train on: one scene where the input is
    at most the encoder's stride on both sides, so its last stage is 1x1 (one value per
    channel); ``counts`` names the options that set the batches."""
    stride = encoder.strides[-1]
    if 1 in sizes and max(input_size) <= stride:
        raise UserError(
            f"input {input_size[0]}x{input_size[1]} (--input-height x --input-width) makes the "
            "encoder's last stage 1x1, where batch norm cannot train on a batch of one scene: "
            f"give an input over {stride} pixels on one side, or {counts} that leave no batch "
            "of one scene"
        )


def _pretrain_command(args: argparse.Namespace) -> None:
    use_threads(args.threads)
    torch.manual_seed(args.seed)
    encoder = build_backbone(args.backbone, "none")
    sizes = batch_sizes(args.scenes, CALIBRATION_BATCH)
    if args.epochs:
        sizes |= batch_sizes(args.scenes, args.batch_size)
    size = (args.input_height, args.input_width)
    check_batch_of_one(encoder, size, sizes, "--scenes and --batch-size")
    start = time.perf_counter()
    scenes = render_scenes(
        seed=args.seed,
        stream=PRETRAIN_STREAM,
        count=args.scenes,
        picture_size=(args.height, args.width),
        input_size=(args.input_height, args.input_width),
        rules=rules_from_args(args),
    )
    rendered = time.perf_counter()
    history = pretrain_encoder(
        encoder,
        scenes,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    with atomic_path(args.out) as tmp:
        torch.save(encoder.state_dict(), tmp)
    log.info(
        "wrote %s: %d scenes rendered in %.1f s, %d epochs + batch-norm calibration in %.1f s, "
        "losses %s",
        args.out,
        len(scenes),
        rendered - start,
        args.epochs,
        time.perf_counter() - rendered,
        [round(x, 4) for x in history],
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis pretrain``."""
    p = add_command(subparsers, "pretrain")
    p.add_argument("--out", type=output_file, required=True, help="encoder state_dict file (.pt)")
    p.add_argument("--backbone", default="resnet18", help=", ".join(BACKBONES))
    p.add_argument("--seed", type=seed_int, default=1, help="scene and initialisation seed")
    p.add_argument("--scenes", type=positive_int, default=3000, help="generated scenes to train on")
    p.add_argument(
        "--epochs", type=non_negative_int, default=6, help="0: only calibrate a random ResNet"
    )
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument(
        "--lr", type=learning_rate, default=2e-3, help="peak AdamW learning rate (one-cycle)"
    )
    p.add_argument("--input-height", type=positive_int, default=48, help="network input height")
    p.add_argument("--input-width", type=positive_int, default=84, help="network input width")
    add_threads_argument(p)
    add_scene_arguments(p)
    p.set_defaults(func=_pretrain_command)
