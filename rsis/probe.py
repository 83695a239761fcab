"""``rsis probe``: what a frozen encoder's features say about each pixel, stage by stage.

For every encoder and stage (conv1, layer1..layer4) a linear classifier (multinomial
logistic regression) reads the stage's features, bilinearly upsampled to the input size, at
single pixels, and predicts the shape and the colour of the object there. Probes are fitted
on object pixels of one set of generated scenes and scored on every object pixel of other,
held-out scenes (``rsis.data.pretext``, probe stream: neither the demo's splits nor the
pretraining scenes). Background pixels are left out, so chance is about 1/6 for both tasks.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch
import torch.nn.functional as F

from rsis.cli import add_command, output_file, positive_int, seed_int
from rsis.cpu import use_threads
from rsis.data.demo.writer import add_scene_arguments, rules_from_args
from rsis.data.pretext import PROBE_STREAM, TASKS, LabelledScenes, render_scenes
from rsis.errors import UserError
from rsis.io import atomic_path
from rsis.model.backbone import (
    BACKBONES,
    STAGES,
    ResNetEncoder,
    backbone_weights,
    encoder_with,
)
from rsis.model.frozen import calibrate_batch_norm
from rsis.pretrain import CALIBRATION_BATCH, batch_sizes, check_batch_of_one
from rsis.progress import progress_bar

log = logging.getLogger(__name__)

PROBED: tuple[str, ...] = ("shape", "colour")


@torch.no_grad()
def object_pixels(
    encoder: ResNetEncoder, scenes: LabelledScenes, keep: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Upsampled features and labels of the pixels marked in ``keep``.

    Args:
        encoder: a ResNet in eval mode.
        scenes: the pictures and labels.
        keep: (N, H, W) bool, the pixels to return.

    Returns:
        One (n, C_stage) tensor per stage, and the (n, len(TASKS)) labels.
    """
    features: list[list[torch.Tensor]] = [[] for _ in STAGES]
    rows = torch.arange(len(scenes)).split(32)
    for batch in progress_bar(rows, desc="probe features", unit="batch", leave=False):
        mask = keep[batch]
        for stage, x in enumerate(encoder.encode_images(scenes.images[batch])):
            up = F.interpolate(x, size=mask.shape[-2:], mode="bilinear", align_corners=False)
            features[stage].append(up.permute(0, 2, 3, 1)[mask])
    labels = scenes.labels.permute(0, 2, 3, 1)[keep]
    return [torch.cat(stage) for stage in features], labels


def sample_objects(scenes: LabelledScenes, per_scene: int | None, seed: int) -> torch.Tensor:
    """Object pixels to use: all of them, or up to ``per_scene`` random ones per scene."""
    objects = scenes.labels[:, 0] > 0
    if per_scene is None:
        return objects
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(objects.shape, generator=generator).masked_fill(~objects, 2.0)
    flat = scores.flatten(1)
    kth = flat.kthvalue(min(per_scene, flat.shape[1]), dim=1).values
    return objects & (scores <= kth.view(-1, 1, 1))


def fit_probe(
    x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1e-4, steps: int = 100
) -> torch.nn.Module:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS).

    Args:
        x: (n, C) features.
        y: (n,) labels in 0..classes-1.
        classes: number of classes.
        l2: weight decay on the weights.
        steps: L-BFGS iterations.
    """
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    linear = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    probe = torch.nn.Sequential(_Standardise(mean, std), linear)
    optimizer = torch.optim.LBFGS(
        linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe.eval()


class _Standardise(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def probe_encoder(
    encoder: ResNetEncoder, fit: LabelledScenes, test: LabelledScenes, per_scene: int, seed: int
) -> dict[str, dict[str, float]]:
    """Held-out probe accuracy per stage and probed task: ``{stage: {task: accuracy}}``."""
    fit_x, fit_y = object_pixels(encoder, fit, sample_objects(fit, per_scene, seed))
    test_x, test_y = object_pixels(encoder, test, sample_objects(test, None, seed))
    _check_pixels(len(fit_y), len(test_y))
    results: dict[str, dict[str, float]] = {}
    for stage, x_fit, x_test in zip(STAGES, fit_x, test_x, strict=True):
        results[stage] = {}
        for name in PROBED:
            task = list(TASKS).index(name)
            probe = fit_probe(x_fit, fit_y[:, task] - 1, len(TASKS[name]))
            with torch.no_grad():
                predicted = probe(x_test).argmax(1)
            results[stage][name] = float((predicted == test_y[:, task] - 1).float().mean())
    return results


def _check_pixels(fit: int, test: int) -> None:
    """Refuse too few object pixels to fit a probe on (2, for a standard deviation) or to
    score it on (1)."""
    if fit < 2 or test < 1:
        raise UserError(
            f"the probes would be fitted on {fit} and scored on {test} object pixels; they "
            "need at least 2 and 1: give more --fit-scenes, --pixels-per-scene or "
            "--test-scenes, or a larger input (--input-height, --input-width)"
        )


def _encoders(specs: list[str]) -> dict[str, str]:
    """``NAME=WEIGHTS`` arguments as a dict, refusing malformed or repeated names."""
    encoders: dict[str, str] = {}
    for spec in specs:
        name, sep, weights = spec.partition("=")
        if not sep or not name or not weights or name in encoders:
            raise UserError(f"--encoder {spec!r}: give NAME=WEIGHTS once per name")
        encoders[name] = weights
    return encoders


def markdown_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Accuracy per encoder, task and stage as a Markdown table."""
    lines = ["| encoder | task | " + " | ".join(STAGES) + " |", "|---|---|" + "---|" * len(STAGES)]
    for name, stages in results.items():
        for task in PROBED:
            cells = " | ".join(f"{100 * stages[s][task]:.1f}%" for s in STAGES)
            lines.append(f"| {name} | {task} | {cells} |")
    return "\n".join(lines)


def _probe_command(args: argparse.Namespace) -> None:
    use_threads(0)  # torch's default threads, subnormal floats flushed
    encoders = _encoders(args.encoder)
    # Each encoder's weights read once, so bad ones are refused before the scenes are rendered.
    states = {name: backbone_weights(args.backbone, weights) for name, weights in encoders.items()}
    common = {
        "seed": args.seed,
        "stream": PROBE_STREAM,
        "picture_size": (args.height, args.width),
        "input_size": (args.input_height, args.input_width),
        "rules": rules_from_args(args),
    }
    fit = render_scenes(count=args.fit_scenes, **common)
    test = render_scenes(count=args.test_scenes, first=args.fit_scenes, **common)
    results = {}
    for name, weights in encoders.items():
        torch.manual_seed(args.seed)
        encoder = encoder_with(args.backbone, states[name], weights).eval()
        if weights == "none":  # random running statistics mean nothing: estimate them
            sizes = batch_sizes(args.fit_scenes, CALIBRATION_BATCH)
            check_batch_of_one(encoder, common["input_size"], sizes, "--fit-scenes")
            calibrate_batch_norm(encoder, fit.images.split(CALIBRATION_BATCH))
        results[name] = probe_encoder(encoder, fit, test, args.pixels_per_scene, args.seed)
    report = {
        "accuracy": results,
        "encoders": encoders,
        "convention": (
            "per-pixel linear probe on each stage's features bilinearly upsampled to the input "
            f"size; fitted on up to {args.pixels_per_scene} object pixels of each of "
            f"{args.fit_scenes} scenes, scored on every object pixel of {args.test_scenes} "
            "held-out scenes; background pixels excluded (chance about 1/6)"
        ),
        "input_size": [args.input_height, args.input_width],
    }
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(markdown_table(results))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis probe``."""
    p = add_command(subparsers, "probe")
    p.add_argument(
        "--encoder",
        action="append",
        required=True,
        help="NAME=WEIGHTS (a state_dict file, imagenet, or none: random, batch norms "
        "calibrated on the fitting scenes); repeat to compare",
    )
    p.add_argument("--out", type=output_file, required=True, help="results (.json)")
    p.add_argument("--backbone", default="resnet18", help=", ".join(BACKBONES))
    p.add_argument("--seed", type=seed_int, default=2, help="seed of the probe scenes")
    p.add_argument(
        "--fit-scenes", type=positive_int, default=200, help="scenes the probes are fitted on"
    )
    p.add_argument("--test-scenes", type=positive_int, default=100, help="held-out scenes scored")
    p.add_argument(
        "--pixels-per-scene", type=positive_int, default=150, help="fitting pixels per scene"
    )
    p.add_argument("--input-height", type=positive_int, default=48, help="network input height")
    p.add_argument("--input-width", type=positive_int, default=84, help="network input width")
    add_scene_arguments(p)
    p.set_defaults(func=_probe_command)
