"""``rsis bench train``: training throughput and the share of step time spent waiting for data.

Runs real training steps (forward, soft IoU, backward, Adam) on batches from a split cache. On
CUDA it compares bf16 autocast + channels_last with plain fp32 in the same run; on CPU it
measures fp32 only.
"""

from __future__ import annotations

import argparse
import time

import torch

from rsis.data.cache import SequenceDataset
from rsis.inference import make_loader, resolve_device
from rsis.model import RRIS, soft_iou_loss
from rsis.text import EmbeddingTable


def measure(args: argparse.Namespace, device: torch.device, mixed: bool) -> dict[str, float]:
    """Images/s, referents/s and data-wait share over ``args.steps`` timed steps."""
    text = EmbeddingTable.load(args.text)
    dataset = SequenceDataset(args.cache, text, order="random", expression="random")
    torch.manual_seed(0)
    model = RRIS(backbone=args.backbone, weights="none", hidden=args.hidden, text_dim=text.dim)
    model = model.to(device)
    if mixed:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    loader = make_loader(
        dataset, args.batch_size, workers=args.workers, shuffle_generator=generator
    )
    images = referents = 0
    wait = 0.0
    step = 0
    start = tick = time.perf_counter()
    while step < args.warmup + args.steps:
        for batch in loader:
            if step == args.warmup:  # restart the clocks after warm-up steps
                if device.type == "cuda":
                    torch.cuda.synchronize()
                images = referents = 0
                wait = 0.0
                start = tick = time.perf_counter()
            wait += time.perf_counter() - tick
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            image = batch["image"]
            if mixed:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
                logits = model(image, batch["text"], batch["valid"])
            loss = soft_iou_loss(logits.float(), batch["masks"], batch["valid"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            images += len(image)
            referents += int(batch["valid"].sum())
            step += 1
            tick = time.perf_counter()
            if step == args.warmup + args.steps:
                break
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": images / elapsed,
        "referents_per_s": referents / elapsed,
        "data_wait_share": wait / elapsed,
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
    modes = (
        {"fp32": False, "bf16+channels_last": True} if device.type == "cuda" else {"fp32": False}
    )
    results = {mode: measure(args, device, mixed) for mode, mixed in modes.items()}
    for mode, r in results.items():
        print(
            f"{mode:>20}: {r['images_per_s']:8.1f} images/s  {r['referents_per_s']:8.1f} "
            f"referents/s  data wait {100 * r['data_wait_share']:5.1f}% of step time"
        )
    if len(results) == 2:
        ratio = results["bf16+channels_last"]["images_per_s"] / results["fp32"]["images_per_s"]
        print(f"bf16+channels_last / fp32: {ratio:.2f}x")


def register(bench: argparse._SubParsersAction) -> None:
    """Add ``rsis bench train``."""
    p = bench.add_parser("train", help="training images/s and data-wait share")
    p.add_argument("--cache", default="results/demo/cache/train.h5", help="train split cache")
    p.add_argument("--text", default="results/demo/text/mean~pca~64.h5", help="embeddings")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=run)
