"""``rsis bench rehearsal``: per-rule cost of two workflow runs, and the per-item scaling.

Reads Snakemake's ``benchmark:`` files of two runs of the rehearsal configuration
(``rehearsal.yaml``; e.g. the 300-image demo and RefCOCO's counts) and prints, per rule: wall
and CPU seconds, peak memory (``max_rss``), output size, the items it handled (images,
expressions; for a training run the images it trained on and validated) and the CPU
seconds per item at both scales with their ratio.
CPU seconds, not wall time, make the per-item ratio: the wall time of a shared machine depends
on what else runs. They come from the ``resources used:`` line every ``rsis`` command ends its
log with (exact, ``rsis.usage``); a rule whose log lacks it (a run of older code) falls back to
Snakemake's sampled ``cpu_time``, marked "(sampled)", which misses each process's last
seconds. The rules that draw or decode pictures at their source size (demo
generation, ``prepare``) also get their CPU seconds per source megapixel: RefCOCO-sized
pictures (COCO's sizes) hold more pixels than the small demo's, so per image they cost more
without anything growing faster than the data.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from rsis.checkpoint import load_checkpoint
from rsis.errors import UserError
from rsis.usage import read_usage


@dataclass(frozen=True)
class RuleCost:
    """One rule's benchmark figures in one run."""

    wall_s: float
    cpu_s: float
    max_rss_mb: float
    output_bytes: int
    items: int
    megapixels: float | None  # source pixels drawn or decoded, for the picture rules
    exact: bool  # CPU time from the rule's log (rsis.usage), not Snakemake's samples


@dataclass(frozen=True)
class _Output:
    """What a rule wrote and how much it handled."""

    path: Path
    items: int
    megapixels: float | None = None


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _count(path: Path, dataset: str) -> int:
    with h5py.File(path, "r") as f:
        return len(f[dataset])


def _image_megapixels(folder: Path) -> float:
    """Pixels of every picture in ``folder`` (read from the file headers), in millions."""
    total = 0
    for path in folder.iterdir():
        with Image.open(path) as image:
            total += image.width * image.height
    return total / 1e6


def _outputs(run: Path, name: str) -> _Output:
    """The output of benchmark ``name`` and what it handled."""
    results = run / "results/demo"
    tokens = results / "text/tokens.h5"

    def val_images() -> int:
        return _count(results / "cache/val.h5", "image_id")

    if name == "demo_dataset":
        images = run / "resources/demo/images"
        count = sum(1 for _ in images.iterdir())
        return _Output(run / "resources/demo", count, _image_megapixels(images))
    if name.startswith("prepare/"):
        cache = results / f"cache/{name.split('/')[1]}.h5"
        with h5py.File(cache, "r") as f:  # source sizes of the pictures the rule decoded
            source_hw = f["image_hw"][:].astype(np.int64)
        return _Output(cache, len(source_hw), float(source_hw.prod(axis=1).sum()) / 1e6)
    if name in ("text/tokenize", "text/embed"):
        out = tokens if name == "text/tokenize" else results / "text/embeddings.h5"
        return _Output(out, _count(tokens, "sent_id"))
    if name.startswith("text/reduce/"):
        return _Output(results / f"text/{name.split('/')[-1]}.h5", _count(tokens, "sent_id"))
    if name.startswith("train/"):
        # Bounded runs: each epoch trains steps x batch images, then validates the val split.
        folder = results / name
        checkpoint = load_checkpoint(folder / "last.pt")
        epochs = len(pd.read_csv(folder / "metrics.csv"))
        steps = checkpoint["settings"].get("steps_per_epoch") or 0
        return _Output(folder, epochs * (steps * checkpoint["run"]["batch_size"] + val_images()))
    if name.startswith("evaluate/") or name == "baselines":  # both score the val split
        val = val_images()
        if name == "baselines":
            return _Output(results / "tables/baselines.csv", val)
        return _Output(results / f"eval/{name.split('/')[1]}", val)
    return _Output(results / name, 1)


def rule_costs(run: Path) -> dict[str, RuleCost]:
    """Every benchmark file of ``run`` (a workflow folder), by rule path."""
    files = sorted((run / "benchmarks").rglob("*.tsv"))
    if not files:
        raise UserError(f"{run} holds no benchmarks/*.tsv: give a folder the workflow ran in")
    costs = {}
    for file in files:
        name = str(file.relative_to(run / "benchmarks").with_suffix("")).removeprefix("demo/")
        row = pd.read_csv(file, sep="\t").iloc[-1]
        output = _outputs(run, name)
        usage = read_usage(run / "logs" / file.relative_to(run / "benchmarks").with_suffix(".log"))
        cpu_s, max_rss = (row["cpu_time"], row["max_rss"]) if usage is None else usage
        costs[name] = RuleCost(
            row["s"],
            cpu_s,
            max(max_rss, row["max_rss"]),
            _size(output.path),
            max(output.items, 1),
            output.megapixels,
            usage is not None,
        )
    return costs


def run(args: argparse.Namespace) -> None:
    """Print the per-rule table of the two runs as Markdown."""
    small, large = rule_costs(args.small), rule_costs(args.large)
    print(
        "| rule | wall s | CPU s | peak memory (max_rss) | output | items | CPU ms per item "
        "(small) | CPU ms per item | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, cost in large.items():
        per_item = 1000 * cost.cpu_s / cost.items
        reference = small.get(name)
        small_item = 1000 * reference.cpu_s / reference.items if reference else float("nan")
        sampled = "" if cost.exact else " (sampled)"
        small_sampled = "" if reference is None or reference.exact else " (sampled)"
        print(
            f"| {name} | {cost.wall_s:,.0f} | {cost.cpu_s:,.0f}{sampled} "
            f"| {cost.max_rss_mb:,.0f} MB "
            f"| {cost.output_bytes / 1e6:,.1f} MB | {cost.items:,} "
            f"| {small_item:,.2f}{small_sampled} "
            f"| {per_item:,.2f} | {per_item / small_item:.2f} |"
        )
    pictures = [
        (name, small[name], cost)
        for name, cost in large.items()
        if cost.megapixels and name in small and small[name].megapixels
    ]
    if pictures:
        print()
        print(
            "| rule | source megapixels (small) | source megapixels | CPU ms per megapixel "
            "(small) | CPU ms per megapixel | ratio |"
        )
        print("|---|---|---|---|---|---|")
    for name, reference, cost in pictures:
        small_mp = 1000 * reference.cpu_s / reference.megapixels
        per_mp = 1000 * cost.cpu_s / cost.megapixels
        print(
            f"| {name} | {reference.megapixels:,.1f} | {cost.megapixels:,.1f} "
            f"| {small_mp:,.1f} | {per_mp:,.1f} | {per_mp / small_mp:.2f} |"
        )


def register(bench: argparse._SubParsersAction) -> None:
    """Add ``rsis bench rehearsal``."""
    p = bench.add_parser("rehearsal", help="per-rule cost of two workflow runs, and scaling")
    p.add_argument("--small", type=Path, required=True, help="folder of the reference run")
    p.add_argument("--large", type=Path, required=True, help="folder of the large run")
    p.set_defaults(func=run)
