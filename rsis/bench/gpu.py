"""``rsis bench gpu``: the paper's workload on one accelerator, printed as one table.

A small demo is generated and run through the data and language stages in a temporary folder
(not timed). Then, at the paper's setting (ResNet-101, 240x427, batch 16, random weights):
training images/s in fp32, bf16 autocast, bf16 + channels_last and, on CUDA, bf16 +
channels_last + torch.compile, with each mode's peak memory and model FLOP utilisation (the
training FLOPs per image that torch counts, times images/s, over this device's measured bf16
matmul peak); evaluation images/s; expressions/s of a text model of bert-base-cased's shape
(random weights); a one-process torchrun training run (NCCL on CUDA, gloo on CPU); and
``rsis predict`` on the device. ``--quick`` shrinks every part (ResNet-18, 64x112, batch 4,
a few steps) so that the CPU check runs in about a minute, in CI.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from rsis.bench.embed import bert_base_shaped, subset
from rsis.bench.pipeline import build_demo_pipeline
from rsis.bench.precision import Mode, StepSettings, make_model, measure
from rsis.bench.timing import matmul_peak_gflops, synchronize
from rsis.cli import main as rsis_main
from rsis.data.cache import SequenceDataset
from rsis.device import add_device_argument, resolve_device
from rsis.errors import UserError
from rsis.inference import make_loader, predict_batches
from rsis.launch import torchrun_arguments
from rsis.model import soft_iou_loss
from rsis.text import EmbeddingTable
from rsis.text.embed import embed_sequences
from rsis.text.models import MINILM, load_tokenizer, resolve_model
from rsis.text.tokenize import read_tokens

MODES: dict[str, Mode] = {
    "fp32": Mode(),
    "bf16 autocast": Mode(bf16=True),
    "bf16 + channels_last": Mode(bf16=True, channels_last=True),
    "bf16 + channels_last + compile": Mode(bf16=True, channels_last=True, compile=True),
}


@dataclass(frozen=True)
class Workload:
    """What the check runs: training steps, input size, demo images, text and torchrun sizes."""

    steps: StepSettings
    size: tuple[int, int]  # network input (height, width)
    picture: tuple[int, int]  # generated image size
    images: int  # generated train images
    pca_dim: int
    expressions: int  # embedded by the bert-base-shaped model
    torchrun_steps: int
    matmul_size: int


PAPER = Workload(
    StepSettings("resnet101", 128, 16, workers=4, warmup=5, steps=30),
    (240, 427), (240, 427), images=96, pca_dim=64, expressions=20_000, torchrun_steps=10,
    matmul_size=8192,
)  # fmt: skip
QUICK = Workload(
    StepSettings("resnet18", 16, 4, workers=0, warmup=1, steps=2),
    (64, 112), (64, 112), images=12, pca_dim=8, expressions=64, torchrun_steps=1,
    matmul_size=512,
)  # fmt: skip


def _figure(value: float) -> str:
    """A measured figure: one decimal from 10 up, three significant digits below."""
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def training_flops_per_image(dataset: SequenceDataset, device: torch.device, work: Workload):
    """FLOPs of one training step (forward, loss, backward) per image, counted by torch."""
    model = make_model(work.steps, dataset.embeddings.dim, device)
    loader = make_loader(dataset, work.steps.batch_size)
    batch = {k: v.to(device) for k, v in next(iter(loader)).items()}
    with FlopCounterMode(display=False) as counter:
        logits = model(batch["image"], batch["text"], batch["valid"])
        soft_iou_loss(logits.float(), batch["masks"], batch["valid"]).backward()
    return counter.get_total_flops() / len(batch["image"])


def evaluation_rate(dataset: SequenceDataset, device: torch.device, work: Workload) -> float:
    """Images/s of the evaluation forward pass (bf16 and channels_last on CUDA), second pass."""
    model = make_model(work.steps, dataset.embeddings.dim, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(dataset, work.steps.batch_size)
    for _ in range(2):  # the first pass warms up, the second is timed
        synchronize(device)
        start = time.perf_counter()
        images = sum(len(batch["image"]) for batch, _ in predict_batches(model, loader, device))
        synchronize(device)
    return images / (time.perf_counter() - start)


def embedding_rate(tokens: Path, device: torch.device, work: Workload) -> float:
    """Expressions/s of a bert-base-cased-shaped model over the demo's expressions, repeated."""
    tokenizer = load_tokenizer(resolve_model(MINILM))
    model = bert_base_shaped(tokenizer).to(device)
    table = read_tokens(tokens)
    ids, ptr = subset(table.ids, table.ptr, np.arange(work.expressions) % len(table))
    precision = "bf16" if device.type == "cuda" else "fp32"
    settings = dict(pad_id=tokenizer.pad_token_id or 0, device=device, precision=precision)
    batch = 512 if device.type == "cuda" else 64
    embed_sequences(model, *subset(ids, ptr, np.arange(min(batch, work.expressions))), **settings)
    synchronize(device)
    start = time.perf_counter()
    embed_sequences(model, ids, ptr, batch_size=batch, progress=False, **settings)
    synchronize(device)
    return work.expressions / (time.perf_counter() - start)


def torchrun_training(root: Path, device: torch.device, work: Workload) -> tuple[str, Path]:
    """One-process ``torchrun`` of ``rsis train``: its images/s and the bundle it wrote."""
    out = root / "torchrun"
    command = [
        sys.executable, "-m", "torch.distributed.run", *torchrun_arguments(1), "train",
        "--train-cache", str(root / "cache/train.h5"),
        "--val-cache", str(root / "cache/val.h5"),
        "--text", str(root / f"text/mean~pca~{work.pca_dim}.h5"), "--out-dir", str(out),
        "--run-id", f"mean-pca-{work.pca_dim}-random-bs{work.steps.batch_size}",
        "--backbone", work.steps.backbone, "--weights", "none",
        "--hidden", str(work.steps.hidden),
        "--epochs", "1", "--steps-per-epoch", str(work.torchrun_steps),
        "--device", device.type,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    backend = "nccl" if device.type == "cuda" else "gloo"
    if done.returncode != 0 or f"process group {backend}" not in done.stderr:
        tail = done.stderr.strip().splitlines()[-5:]
        raise UserError(f"torchrun training failed (exit {done.returncode}): {' | '.join(tail)}")
    rate = pd.read_csv(out / "metrics.csv")["images_per_s"].iloc[-1]
    return (
        f"{_figure(rate)} images/s, {work.torchrun_steps} steps, backend {backend}",
        out / "bundle.pt",
    )


def predict_seconds(root: Path, bundle: Path, device: torch.device) -> float:
    """Seconds of one ``rsis predict`` call (load the bundle, 2 expressions), the second call."""
    image = sorted((root / "resources/demo/images").glob("*.jpg"))[0]
    argv = ["predict", "--model", str(bundle), "--image", str(image), "--device", str(device)]
    argv += ["--expr", "the red shape", "--expr", "the blue shape", "--out", str(root / "pred")]
    for _ in range(2):
        start = time.perf_counter()
        if rsis_main(argv) != 0:
            raise UserError("rsis predict failed in the GPU check (its error is printed above)")
    return time.perf_counter() - start


def training_rows(root: Path, device: torch.device, work: Workload) -> list[tuple[str, str]]:
    """One row per training mode: images/s, peak memory, model FLOP utilisation."""
    text = EmbeddingTable.load(root / f"text/mean~pca~{work.pca_dim}.h5")
    dataset = SequenceDataset(root / "cache/train.h5", text, order="random", expression="random")
    flops = training_flops_per_image(dataset, device, work)
    peak = matmul_peak_gflops(work.matmul_size, 3, torch.bfloat16, device) * 1e9
    rows = [
        ("training FLOPs per image", f"{_figure(flops / 1e9)} GFLOP (forward + backward)"),
        ("bf16 matmul peak, measured", f"{_figure(peak / 1e12)} TFLOP/s"),
    ]
    for name, mode in MODES.items():
        if mode.compile and device.type != "cuda":
            rows.append((f"train {name}", "not run (CUDA only)"))
            continue
        r = measure(dataset, device, mode, work.steps)
        memory = f", peak memory {r['peak_memory_gb']:.1f} GB" if device.type == "cuda" else ""
        mfu = 100 * flops * r["images_per_s"] / peak
        rows.append(
            (f"train {name}", f"{_figure(r['images_per_s'])} images/s{memory}, MFU {_figure(mfu)}%")
        )
    rows.append(("evaluation", f"{_figure(evaluation_rate(dataset, device, work))} images/s"))
    return rows


def run(args: argparse.Namespace) -> None:
    """Build the demo inputs, measure every part, print the table."""
    device = resolve_device(args.device)
    work = QUICK if args.quick else PAPER
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    with tempfile.TemporaryDirectory(prefix="rsis-bench-gpu-") as folder:
        root = Path(folder)
        build_demo_pipeline(
            root, seed=0, counts=(work.images, 4, 0, 0), size=work.size,
            pca_dim=work.pca_dim, picture=work.picture,
        )  # fmt: skip
        start = time.perf_counter()
        rows = training_rows(root, device, work)
        rate = embedding_rate(root / "text/tokens.h5", device, work)
        rows.append(("bert-base-shaped embedding", f"{_figure(rate)} expressions/s"))
        summary, bundle = torchrun_training(root, device, work)
        rows.append(("torchrun, 1 process", summary))
        rows.append(("rsis predict", f"{predict_seconds(root, bundle, device):.2f} s per call"))
        elapsed = time.perf_counter() - start
    steps = work.steps
    print(
        f"| rsis bench gpu{' --quick' if args.quick else ''} on {name}: {steps.backbone}, "
        f"{work.size[0]}x{work.size[1]}, batch {steps.batch_size}, {steps.steps} timed steps | |"
    )
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    print(f"| measured in | {elapsed:.0f} s (demo inputs not counted) |")


def register(bench: argparse._SubParsersAction) -> None:
    """Add ``rsis bench gpu``."""
    p = bench.add_parser("gpu", help="the paper's workload on one accelerator, one table")
    add_device_argument(p, note="the torchrun row trains on GPU 0 (its local rank)")
    p.add_argument(
        "--quick", action="store_true", help="a small workload (about a minute on CPU, for CI)"
    )
    p.set_defaults(func=run)
