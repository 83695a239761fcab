"""Shared fixtures: the real RefCOCO sample beside the checkout (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsis.bench.pipeline import build_demo_pipeline

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE_ROOT = SHARED_DATA / "refcoco-sample"
EXPRESSIONS_DIR = SHARED_DATA / "refcoco-expressions"


@pytest.fixture(scope="session")
def sample_refer():
    """The 9-image real RefCOCO sample, loaded with the package's reader."""
    from rsis.data.refer import load_refer

    if not SAMPLE_ROOT.exists():
        pytest.fail(f"real RefCOCO sample missing: expected {SAMPLE_ROOT} beside the checkout")
    return load_refer(SAMPLE_ROOT, "refcoco", "unc")


@pytest.fixture(scope="session")
def demo_pipeline(tmp_path_factory) -> Path:
    """A tiny demo (8 train, 4 images per other split) at full difficulty, cached at 48x80."""
    root = tmp_path_factory.mktemp("demo_pipeline")
    return build_demo_pipeline(root, seed=3, counts=(8, 4, 4, 4), size=(48, 80), pca_dim=8)


@pytest.fixture(scope="session")
def learnable_demo(tmp_path_factory) -> Path:
    """The demo at the workflow's learnable difficulty (up to 4 shapes, unique colours,
    attribute expressions): 150 train and 40 val images, cached at 48x84."""
    root = tmp_path_factory.mktemp("learnable_demo")
    rules = ("--max-objects=4", "--colour-reuse=0", "--templates", "attribute")
    counts = (150, 40, 1, 1)
    return build_demo_pipeline(root, seed=0, counts=counts, size=(48, 84), pca_dim=64, rules=rules)


def make_train_config(root, out_dir, **overrides):
    """A tiny CPU training run on ``demo_pipeline`` outputs (2 epochs, resnet18).

    ``overrides`` name run coordinates (``transform``, ``dim``, ...), settings (``lr``, ...)
    or ``TrainConfig`` fields; the text file is the run's reduce output unless given.
    """
    import dataclasses

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
