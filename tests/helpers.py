"""Helpers the tests share: paths of the real data beside the checkout and a tiny training
configuration. Fixtures live in conftest.py; tests import helpers from here (the demo pipeline
they train on is ``rsis.bench.pipeline.build_demo_pipeline``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE_ROOT = SHARED_DATA / "refcoco-sample"
EXPRESSIONS_DIR = SHARED_DATA / "refcoco-expressions"


def make_train_config(root, out_dir, **overrides):
    """A tiny CPU training run on ``demo_pipeline`` outputs (2 epochs, resnet18).

    ``overrides`` name run coordinates (``transform``, ``dim``, ...), settings (``lr``, ...)
    or ``TrainConfig`` fields; the text file is the run's reduce output unless given.
    """
    from rsis.runs import RunSpec, TrainSettings
    from rsis.train import TrainConfig

    def take(cls, **defaults):
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**defaults | {k: overrides.pop(k) for k in list(overrides) if k in names})

    run = take(RunSpec, embedding="mean", transform="pca", dim=8, order="random", batch_size=4)
    settings = take(
        TrainSettings,
        backbone="resnet18",
        weights="none",
        hidden=16,
        lr=1e-3,
        encoder_lr=1e-3,
        epochs=2,
        patience=5,
    )
    paths = dict(
        train_cache=root / "cache/train.h5",
        val_cache=root / "cache/val.h5",
        text=root / "text" / run.text_file,
        out_dir=out_dir,
        device="cpu",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    return TrainConfig(run=run, settings=settings, **(paths | overrides))


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
