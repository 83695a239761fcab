"""``rsis bench metrics``: referents scored per second by ``MetricAccumulator``.

Random masks are generated chunk by chunk (generation is not timed); only ``update`` calls
and the final ``summary`` are timed, so the figure is the cost of scoring alone.
"""

from __future__ import annotations

import argparse
import time

import torch

from rsis.bench.timing import synchronize
from rsis.cli import positive_int, seed_int
from rsis.device import add_device_argument, resolve_device
from rsis.metrics import MetricAccumulator
from rsis.progress import progress_bar


def referents_per_second(
    referents: int, height: int, width: int, chunk: int, device: torch.device, seed: int
) -> tuple[float, dict]:
    """Score ``referents`` random (prediction, ground truth) pairs; return (rate, summary).

    Args:
        referents: how many referents to score.
        height: mask height.
        width: mask width.
        chunk: referents per ``update`` call (and per generated batch).
        device: where to score.
        seed: seed of the random masks.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    accumulator = MetricAccumulator(resolution=f"{height}x{width} (random masks)")
    elapsed = 0.0
    with progress_bar(total=referents, desc="bench metrics", unit="ref") as progress:
        for start in range(0, referents, chunk):
            n = min(chunk, referents - start)
            shape = (n, height, width)
            gt = torch.rand(shape, generator=generator, device=device) < 0.3
            noise = torch.rand(shape, generator=generator, device=device) < 0.1
            pred = gt ^ noise
            synchronize(device)
            begin = time.perf_counter()
            accumulator.update(pred, gt, ids=torch.arange(start, start + n))
            elapsed += time.perf_counter() - begin
            progress.update(n)
    begin = time.perf_counter()
    summary = accumulator.summary()
    elapsed += time.perf_counter() - begin
    return referents / elapsed, summary


def _bench_metrics_command(args: argparse.Namespace) -> None:
    """Print referents/s and the (sanity) metrics of the random masks."""
    device = resolve_device(args.device)
    rate, summary = referents_per_second(
        args.referents, args.height, args.width, args.chunk, device, args.seed
    )
    metrics = summary["metrics"]
    print(
        f"metrics on {device}: {args.referents} referents at {args.height}x{args.width}, "
        f"chunks of {args.chunk}, {torch.get_num_threads()} torch threads"
    )
    print(f"throughput: {rate:,.0f} referents/s")
    print(
        f"(random masks: instance IoU {metrics['instance_iou']:.4f}, "
        f"overall IoU {metrics['overall_iou']:.4f})"
    )


def register(bench: argparse._SubParsersAction) -> None:
    """Add ``rsis bench metrics``."""
    p = bench.add_parser("metrics", help="referents/s of the IoU metrics on random masks")
    p.add_argument("--referents", type=positive_int, default=10_000, help="referents to score")
    p.add_argument("--height", type=positive_int, default=240, help="mask height")
    p.add_argument("--width", type=positive_int, default=427, help="mask width")
    p.add_argument("--chunk", type=positive_int, default=500, help="referents per update call")
    add_device_argument(p, default="cpu")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random masks")
    p.set_defaults(func=_bench_metrics_command)
