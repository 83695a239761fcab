"""``rsis bench train``: the training step before and after stored features, side by side.

Both paths run real training steps (forward, soft IoU, backward, Adam) of the same model on
the same batches of a split cache, in one process with the same thread count:

- **before**: the step as rsis trained a frozen encoder until stored features existed: the
  ResNet runs on every image with its batch norms in training mode (batch statistics), and
  the decoder convolves ``[skip, up(h), h]`` at every step and applies the head per step
  (``reference_forward``, kept here as the baseline and as the reference of the equivalence
  test);
- **after**: the encoder's features come from ``rsis features`` (eval mode, stored once) and
  the decoder computes what does not depend on the recurrent state once per sequence, and
  a sequence takes no steps after its last referent.

A third path, **whole-batch**, is "after" with every step on every sequence of the batch (the
model is not told which slots are padding; the loss still is), as before ended sequences were
dropped: after / whole-batch is what dropping them gains.

Rounds alternate between the two paths so that a load change on a shared machine hits both;
the ratio of their medians is the figure, in wall-clock time and in this process's CPU time
(which leaves out the waits for other processes on a loaded machine). Also printed: the
decoder's effective GFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` over the "after"
step) against this CPU's fp32 matmul peak measured in the same run, the FLOPs of both steps
(their ratio is what the speed-up would be at equal GFLOP/s), and the one-off costs
(batch-norm calibration, feature caching, and pretraining measured on a few scenes and scaled
to the configured run).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rsis.bench.timing import matmul_peak_gflops
from rsis.checkpoint import load_trained_model
from rsis.cli import non_negative_int, positive_int
from rsis.cpu import use_threads
from rsis.data.cache import SequenceDataset
from rsis.data.demo.scenes import SceneRules
from rsis.data.pretext import PRETRAIN_STREAM, render_scenes
from rsis.device import resolve_device
from rsis.errors import UserError
from rsis.features import FeatureStore, cache_images, write_features
from rsis.inference import make_loader
from rsis.model import RRIS, soft_iou_loss
from rsis.model.backbone import build_backbone
from rsis.model.convlstm import tiled_conv2d
from rsis.model.frozen import calibrate_batch_norm, encoder_digest
from rsis.pretrain import pretrain_encoder
from rsis.text import EmbeddingTable
from rsis.text.identity import text_identity

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def reference_forward(
    model: RRIS, images: torch.Tensor, text: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """The model's forward pass computed as rsis did before this benchmark's changes.

    Same parameters and the same function (tested equal to ``RRIS.forward``), computed step
    by step: the encoder on the images, at every step one convolution of ``[skip, up(h), h]``
    per scale plus the tiled text, the padded slots masked at every step, the head per step.
    """
    skips = model.decoder.project(model.encoder.encode_images(images))
    embeddings = model.text(text)
    state = model.decoder.initial_state(skips)
    batch, steps = text.shape[:2]
    logits = []
    for t in range(steps):
        new_state, h = [], None
        for cell, skip, (h_prev, c_prev) in zip(model.decoder.cells, skips, state, strict=True):
            x = skip
            if h is not None:
                up = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                x = torch.cat([skip, up], dim=1)
            weight = cell.gates.weight
            gates = F.conv2d(
                torch.cat([x, h_prev], dim=1),
                weight[:, : cell.split],
                cell.gates.bias,
                padding=cell.gates.padding,
            )
            gates = gates + tiled_conv2d(embeddings[:, t], weight[:, cell.split :], x.shape[-2:])
            in_gate, forget_gate, out_gate, cell_gate = gates.chunk(4, dim=1)
            c = torch.sigmoid(forget_gate) * c_prev + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
            h = torch.sigmoid(out_gate) * torch.tanh(c)
            new_state.append((h, c))
        keep = valid[:, t].view(batch, 1, 1, 1)
        state = [
            (torch.where(keep, h1, h0), torch.where(keep, c1, c0))
            for (h1, c1), (h0, c0) in zip(new_state, state, strict=True)
        ]
        logits.append(model.decoder.head(h))
    return F.interpolate(
        torch.cat(logits, dim=1), size=images.shape[-2:], mode="bilinear", align_corners=False
    )


def _train_step(optimizer: torch.optim.Optimizer, forward: Forward, batch: dict) -> None:
    """One training step: ``forward``, soft IoU loss, backward, ``optimizer`` step."""
    logits = forward(batch)
    loss = soft_iou_loss(logits.float(), batch["masks"], batch["valid"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def decoder_adam_state(saved: dict) -> dict:
    """The decoder group of a training run's Adam state (``rsis train`` puts it first; a
    trainable encoder's group follows), for an Adam over ``decoder_parameters`` alone."""
    group = next(g for g in saved["param_groups"] if g.get("name") == "decoder")
    state = {i: saved["state"][i] for i in group["params"] if i in saved["state"]}
    return {"state": state, "param_groups": [group]}


def _flops(fn: Callable[[], object]) -> int:
    """FLOPs ``fn`` runs (``torch.utils.flop_counter``: convolutions and matrix products)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _pretrain_seconds(args: argparse.Namespace, size: tuple[int, int]) -> dict[str, float]:
    """Seconds per scene to render and per scene and epoch to pretrain, on a few scenes."""
    rules = SceneRules(args.max_objects, args.colour_reuse, ("attribute",))
    start = time.perf_counter()
    scenes = render_scenes(
        seed=0,
        stream=PRETRAIN_STREAM,
        count=args.pretrain_scenes,
        picture_size=(240, 427),
        input_size=size,
        rules=rules,
    )
    rendered = time.perf_counter()
    encoder = build_backbone(args.backbone, "none")
    pretrain_encoder(encoder, scenes, epochs=1, batch_size=32, lr=2e-3, seed=0)
    trained = time.perf_counter()
    return {
        "render": (rendered - start) / len(scenes),
        "train": (trained - rendered) / len(scenes),
    }


def run(args: argparse.Namespace) -> None:
    """Time both paths in alternating rounds and print the comparison."""
    if args.start_from is not None and args.threads != 1:
        raise UserError(
            f"--start-from with --threads {args.threads}: the paths' subnormal handling is "
            "switched per round, which torch sets per thread; use --threads 1"
        )
    use_threads(args.threads)
    device = resolve_device("cpu")
    text = EmbeddingTable.load(args.text)
    dataset = SequenceDataset(args.cache, text, order="random", expression="random")
    loader = make_loader(
        dataset, args.batch_size, shuffle_generator=torch.Generator().manual_seed(0)
    )
    batches = [batch for _, batch in zip(range(args.steps), loader, strict=False)]
    images_per_round = sum(len(batch["image"]) for batch in batches)
    size = tuple(batches[0]["image"].shape[-2:])

    torch.manual_seed(0)
    if args.start_from is None:
        before = RRIS(backbone=args.backbone, weights="none", hidden=args.hidden, text_dim=text.dim)
        trained = None
    else:
        before, trained = load_trained_model(args.start_from, text_identity(text))
    after = copy.deepcopy(before)
    before.encoder.requires_grad_(False)  # frozen as before: no gradients, train-mode BN
    after.freeze_encoder()
    # a trained run's encoder keeps its statistics: its calibration is timed on a copy
    calibrated = after.encoder if trained is None else copy.deepcopy(after.encoder)
    calibration = _seconds(lambda: calibrate_batch_norm(calibrated, cache_images(args.cache)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.h5"
        caching = _seconds(lambda: write_features(after.encoder, args.cache, path))
        store = FeatureStore(path, args.cache, encoder_digest(after.encoder))

    def run_before(batch: dict) -> torch.Tensor:
        return reference_forward(before, batch["image"], batch["text"], batch["valid"])

    def with_stored_features(model: RRIS, bf16: bool = False, whole: bool = False) -> Forward:
        def forward(batch: dict) -> torch.Tensor:
            features = store.batch(batch["image_row"], device)
            valid = None if whole else batch["valid"]  # trailing padding: same valid logits
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(batch["image"], batch["text"], valid, features=features)

        return forward

    whole_batch = copy.deepcopy(after)
    paths = {
        "before": (before, run_before),
        "after": (after, with_stored_features(after)),
        "whole-batch": (whole_batch, with_stored_features(whole_batch, whole=True)),
    }
    if args.bf16:
        after_bf16 = copy.deepcopy(after)
        paths["after-bf16"] = (after_bf16, with_stored_features(after_bf16, bf16=True))
    optimizers = {
        name: torch.optim.Adam(model.decoder_parameters(), lr=1e-4)
        for name, (model, _) in paths.items()
    }
    if trained is not None:  # Adam's moments as late in the run, and the run's learning rate
        for optimizer in optimizers.values():
            optimizer.load_state_dict(decoder_adam_state(trained["optimizer"]))
    # from a trained run, the before path keeps subnormal floats, as rsis trained before
    keeps_subnormals = {name: trained is not None and name == "before" for name in paths}
    for name, (model, forward) in paths.items():  # warm-up
        torch.set_flush_denormal(not keeps_subnormals[name])
        model.train()
        for batch in batches[: args.warmup]:
            _train_step(optimizers[name], forward, batch)

    def one_round(name: str) -> Callable[[], object]:
        forward = paths[name][1]
        torch.set_flush_denormal(not keeps_subnormals[name])
        return lambda: [_train_step(optimizers[name], forward, b) for b in batches]

    rates: dict[str, list[float]] = {name: [] for name in paths}
    cpu_rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name in paths:
            cpu_start = time.process_time()
            rates[name].append(images_per_round / _seconds(one_round(name)))
            cpu_rates[name].append(images_per_round / (time.process_time() - cpu_start))
    flops = {name: _flops(one_round(name)) / images_per_round for name in paths}
    torch.set_flush_denormal(True)
    flops_per_image = flops["after"]
    peak = matmul_peak_gflops(2048, repeats=5)  # fp32, CPU
    pretrain = _pretrain_seconds(args, size)

    median = {name: statistics.median(values) for name, values in rates.items()}
    decoder_gflops = flops_per_image * median["after"] / 1e9
    print(
        f"CPU, {torch.get_num_threads()} torch threads, {args.backbone}, hidden {args.hidden}, "
        f"batch {args.batch_size}, input {size[0]}x{size[1]}, {len(batches)} batches x "
        f"{args.rounds} alternating rounds, cache {args.cache}"
    )
    if trained is not None:
        print(
            f"from {args.start_from} (epoch {trained['epoch']}): the before path keeps "
            "subnormal floats (as rsis trained before), the others flush them"
        )
    labels = {
        "before": "live encoder (train-mode BN), step-by-step decoder",
        "after": "stored features, decoder with per-sequence gate parts",
        "whole-batch": "after, every step on every sequence of the batch",
        "after-bf16": "the same under CPU bf16 autocast",
    }
    for name in paths:
        spread = f"{min(rates[name]):.1f}-{max(rates[name]):.1f}"
        print(f"{name:>10}: {median[name]:7.1f} images/s (rounds {spread})  {labels[name]}")
    print(f"  ratio: {median['after'] / median['before']:.2f}x (after / before, medians)")
    cpu = {name: statistics.median(values) for name, values in cpu_rates.items()}
    print(
        f"    CPU: {cpu['before']:.1f} / {cpu['after']:.1f} images per CPU second: "
        f"{cpu['after'] / cpu['before']:.2f}x (the ratio with the waits for other processes "
        "left out)"
    )
    referents = sum(int(batch["valid"].sum()) for batch in batches)
    slots = sum(batch["valid"].numel() for batch in batches)
    print(
        f"  ended sequences: {median['after'] / median['whole-batch']:.2f}x wall, "
        f"{cpu['after'] / cpu['whole-batch']:.2f}x CPU, "
        f"{flops['whole-batch'] / flops['after']:.2f}x fewer FLOPs (after / whole-batch; "
        f"{referents / images_per_round:.2f} referents per image, {slots - referents} of "
        f"{slots} slots padding)"
    )
    if "after-bf16" in paths:
        print(
            f"   bf16: {median['after-bf16'] / median['after']:.2f}x wall, "
            f"{cpu['after-bf16'] / cpu['after']:.2f}x CPU (after-bf16 / after)"
        )
    print(
        f"  FLOPs: before {flops['before'] / 1e9:.3f}, after {flops['after'] / 1e9:.3f} GFLOP "
        f"per image: {flops['before'] / flops['after']:.2f}x fewer (the ratio at equal GFLOP/s)"
    )
    print(
        f"decoder: {flops_per_image / 1e9:.3f} GFLOP per image (forward + backward), "
        f"{decoder_gflops:.1f} GFLOP/s effective = {100 * decoder_gflops / peak:.1f}% of the "
        f"fp32 matmul peak {peak:.1f} GFLOP/s measured now"
    )
    scene_epochs = args.config_scenes * args.config_epochs
    estimate = args.config_scenes * pretrain["render"] + scene_epochs * pretrain["train"]
    print(
        f"one-off: batch-norm calibration {calibration:.2f} s, feature caching {caching:.2f} s "
        f"({len(store.stages[0])} images); pretraining {1000 * pretrain['render']:.1f} ms per "
        f"scene rendered + {1000 * pretrain['train']:.1f} ms per scene and epoch (measured on "
        f"{args.pretrain_scenes} scenes), so {args.config_scenes} scenes x "
        f"{args.config_epochs} epochs take about {estimate:.0f} s"
    )


def register(bench: argparse._SubParsersAction) -> None:
    """Add ``rsis bench train``."""
    p = bench.add_parser(
        "train", help="training images/s before and after stored features, side by side"
    )
    p.add_argument("--cache", type=Path, default=Path("results/demo/cache/train.h5"))
    p.add_argument("--text", type=Path, default=Path("results/demo/text/mean~pca~64.h5"))
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--hidden", type=positive_int, default=64)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--steps", type=positive_int, default=8, help="batches per timed round")
    p.add_argument("--rounds", type=positive_int, default=5, help="alternating rounds per path")
    p.add_argument(
        "--warmup", type=non_negative_int, default=2, help="untimed steps per path first"
    )
    p.add_argument(
        "--threads",
        type=non_negative_int,
        default=1,
        help="torch threads (1: each of 2 parallel jobs)",
    )
    p.add_argument(
        "--pretrain-scenes", type=positive_int, default=64, help="scenes of the cost sample"
    )
    p.add_argument(
        "--config-scenes", type=positive_int, default=3000, help="pretraining scenes to cost"
    )
    p.add_argument(
        "--config-epochs", type=non_negative_int, default=6, help="pretraining epochs to cost"
    )
    p.add_argument("--max-objects", type=int, default=4, help="demo scene rule")
    p.add_argument("--colour-reuse", type=float, default=0.0, help="demo scene rule")
    p.add_argument(
        "--bf16", action="store_true", help="also time the after path under CPU bf16 autocast"
    )
    p.add_argument(
        "--start-from",
        type=Path,
        help="a trained run's checkpoint (best.pt or last.pt; its model replaces --backbone "
        "and --hidden): both paths continue its training, where the old path's arithmetic "
        "meets subnormal floats, which it keeps as rsis did before (needs --threads 1)",
    )
    p.set_defaults(func=run)
