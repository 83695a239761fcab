"""``rsis bench precision``: training throughput per precision, and the data-wait share.

Runs real training steps (forward, soft IoU, backward, Adam) on batches from a split cache. On
CUDA it compares bf16 autocast + channels_last with plain fp32 in the same run; on CPU it
measures fp32 only.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass

import torch

from rsis.bench.timing import synchronize
from rsis.cli import non_negative_int, positive_int
from rsis.data.cache import SequenceDataset
from rsis.device import add_device_argument, resolve_device
from rsis.inference import make_loader
from rsis.model import RRIS, soft_iou_loss
from rsis.text import EmbeddingTable


@dataclass(frozen=True)
class Mode:
    """How a training step runs: bf16 autocast, channels_last memory, torch.compile."""

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False


@dataclass(frozen=True)
class StepSettings:
    """The timed training: model shape, batch, loader workers, untimed and timed steps."""

    backbone: str = "resnet18"
    hidden: int = 32
    batch_size: int = 16
    workers: int = 0
    warmup: int = 3
    steps: int = 20


def _batches(dataset: SequenceDataset, settings: StepSettings):
    """Shuffled batches without end (epoch after epoch), reproducible."""
    generator = torch.Generator().manual_seed(0)
    loader = make_loader(
        dataset, settings.batch_size, workers=settings.workers, shuffle_generator=generator
    )
    while True:
        yield from loader


def make_model(settings: StepSettings, text_dim: int, device: torch.device) -> RRIS:
    """The timed model, random weights (seed 0), on ``device``."""
    torch.manual_seed(0)
    model = RRIS(
        backbone=settings.backbone, weights="none", hidden=settings.hidden, text_dim=text_dim
    )
    return model.to(device)


def measure(
    dataset: SequenceDataset, device: torch.device, mode: Mode, settings: StepSettings
) -> dict[str, float]:
    """Images/s, referents/s, data-wait share and peak memory over the timed steps."""
    model = make_model(settings, dataset.embeddings.dim, device)
    memory = torch.channels_last if mode.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    net = torch.compile(model) if mode.compile else model
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if mode.bf16 else contextlib.nullcontext()
    )
    images = referents = 0
    wait = 0.0
    batches = _batches(dataset, settings)
    for step in range(settings.warmup + settings.steps):
        if step == settings.warmup:  # restart the clocks after warm-up steps
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            images = referents = 0
            wait = 0.0
            start = tick = time.perf_counter()
        batch = next(batches)
        if step >= settings.warmup:
            wait += time.perf_counter() - tick
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        image = batch["image"].contiguous(memory_format=memory)
        with autocast:
            logits = net(image, batch["text"], batch["valid"])
        loss = soft_iou_loss(logits.float(), batch["masks"], batch["valid"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        images += len(image)
        referents += int(batch["valid"].sum())
        tick = time.perf_counter()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {
        "images_per_s": images / elapsed,
        "referents_per_s": referents / elapsed,
        "data_wait_share": wait / elapsed,
        "peak_memory_gb": peak / 1e9,
    }


def run(args: argparse.Namespace) -> None:
    """Print the throughput of each precision the device supports."""
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = torch.get_num_threads()
    print(
        f"device {name} ({threads} torch threads), {args.backbone}, hidden {args.hidden}, "
        f"batch {args.batch_size}, {args.workers} loader workers, cache {args.cache}"
    )
    settings = StepSettings(
        args.backbone, args.hidden, args.batch_size, args.workers, args.warmup, args.steps
    )
    dataset = SequenceDataset(
        args.cache, EmbeddingTable.load(args.text), order="random", expression="random"
    )
    modes = {"fp32": Mode()}
    if device.type == "cuda":
        modes["bf16+channels_last"] = Mode(bf16=True, channels_last=True)
    results = {name: measure(dataset, device, mode, settings) for name, mode in modes.items()}
    for mode, r in results.items():
        print(
            f"{mode:>20}: {r['images_per_s']:8.1f} images/s  {r['referents_per_s']:8.1f} "
            f"referents/s  data wait {100 * r['data_wait_share']:5.1f}% of step time"
        )
    if len(results) == 2:
        ratio = results["bf16+channels_last"]["images_per_s"] / results["fp32"]["images_per_s"]
        print(f"bf16+channels_last / fp32: {ratio:.2f}x")


def register(bench: argparse._SubParsersAction) -> None:
    """Add ``rsis bench precision``."""
    d = StepSettings()
    p = bench.add_parser("precision", help="training images/s and data-wait share")
    p.add_argument("--cache", default="results/demo/cache/train.h5", help="train split cache")
    p.add_argument("--text", default="results/demo/text/mean~pca~64.h5", help="embeddings")
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument("--hidden", type=positive_int, default=d.hidden)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument(
        "--workers", type=non_negative_int, default=d.workers, help="DataLoader worker processes"
    )
    p.add_argument("--steps", type=positive_int, default=d.steps, help="timed steps")
    p.add_argument("--warmup", type=non_negative_int, default=d.warmup, help="untimed steps first")
    add_device_argument(p)
    p.set_defaults(func=run)
