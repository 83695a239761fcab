"""The demo's pretext pretraining learns, and the linear probe measures what an encoder reads."""

from __future__ import annotations

import torch

from rsis.cpu import use_threads
from rsis.data.demo.scenes import DIFFICULTIES
from rsis.data.pretext import PRETRAIN_STREAM, PROBE_STREAM, render_scenes
from rsis.model.backbone import build_backbone
from rsis.model.frozen import calibrate_batch_norm
from rsis.pretrain import pretrain_encoder
from rsis.probe import probe_encoder

PICTURE, INPUT = (96, 170), (48, 84)
RULES = DIFFICULTIES["shapes"]


def test_pretext_training_lowers_its_loss_and_calibrates_the_batch_norms():
    use_threads(1)
    scenes = render_scenes(
        seed=0, stream=PRETRAIN_STREAM, count=64, picture_size=PICTURE, input_size=INPUT,
        rules=RULES,
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", "none")
    losses = pretrain_encoder(encoder, scenes, epochs=4, batch_size=16, lr=2e-3, seed=0)
    assert len(losses) == 4
    assert losses[-1] < 0.7 * losses[0], losses  # measured: 27.0 -> 14.6
    # calibrated on the scenes: no batch norm keeps the defaults (mean 0, variance 1)
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(torch.all(m.running_var == 1) for m in norms)


def test_probe_finds_colour_but_not_shape_in_a_random_encoder():
    """A random ResNet's first stage keeps each pixel's colour (measured 99%) but not the
    shape of its object (25%, chance about 1/6): a probe that mixed up pixels or labels
    would lose the colour, one that saw the answer would find the shape."""
    use_threads(1)
    common = dict(seed=2, stream=PROBE_STREAM, picture_size=PICTURE, input_size=INPUT, rules=RULES)
    fit = render_scenes(count=20, **common)
    test = render_scenes(count=10, first=20, **common)
    torch.manual_seed(2)
    encoder = build_backbone("resnet18", "none").eval()
    calibrate_batch_norm(encoder, fit.images.split(64))
    accuracy = probe_encoder(encoder, fit, test, per_scene=150, seed=2)
    assert set(accuracy) == {"conv1", "layer1", "layer2", "layer3", "layer4"}
    assert accuracy["conv1"]["colour"] > 0.9, accuracy
    assert accuracy["conv1"]["shape"] < 0.45, accuracy
