"""Shared fixtures: the real RefCOCO sample beside the checkout (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
def demo_pipeline(tmp_path_factory):
    """A tiny generated demo dataset run through the data and language stages.

    Returns the folder, holding ``resources/demo`` (refer layout), ``cache/<split>.h5`` at
    48x80, and ``text/`` with tokens, embeddings (packaged MiniLM) and two reduce outputs.
    """
    from rsis.cli import main

    root = tmp_path_factory.mktemp("demo_pipeline")
    demo = root / "resources/demo"
    counts = ["--train-images", "8", "--val-images", "4", "--testa-images", "4"]
    assert (
        main(
            [
                "demo",
                "--out",
                str(demo),
                "--seed",
                "3",
                *counts,
                "--testb-images",
                "4",
                "--height",
                "64",
                "--width",
                "112",
            ]
        )
        == 0
    )
    refer = ["--refs-root", str(demo), "--dataset", "demo", "--split-by", "unc"]
    for split in ("train", "val", "testA", "testB"):
        out = root / f"cache/{split}.h5"
        assert (
            main(
                [
                    "prepare",
                    *refer,
                    "--images",
                    str(demo / "images"),
                    "--split",
                    split,
                    "--height",
                    "48",
                    "--width",
                    "80",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    text = root / "text"
    assert main(["tokenize", *refer, "--model", "minilm", "--out", str(text / "tokens.h5")]) == 0
    assert (
        main(
            [
                "embed",
                "--tokens",
                str(text / "tokens.h5"),
                "--model",
                "minilm",
                "--out",
                str(text / "embeddings.h5"),
            ]
        )
        == 0
    )
    for transform, dim in (("pca", "8"), ("none", "native")):
        assert (
            main(
                [
                    "reduce",
                    "--embeddings",
                    str(text / "embeddings.h5"),
                    "--tokens",
                    str(text / "tokens.h5"),
                    "--embedding",
                    "mean",
                    "--transform",
                    transform,
                    "--dim",
                    dim,
                    "--out",
                    str(text / f"mean~{transform}~{dim}.h5"),
                ]
            )
            == 0
        )
    return root


def make_train_config(root, out_dir, **overrides):
    """A tiny CPU training configuration on ``demo_pipeline`` outputs (2 epochs, resnet18)."""
    from rsis.train import TrainConfig

    settings = dict(
        train_cache=root / "cache/train.h5",
        val_cache=root / "cache/val.h5",
        text=root / "text/mean~pca~8.h5",
        out_dir=out_dir,
        backbone="resnet18",
        weights="none",
        hidden=16,
        lr=1e-3,
        encoder_lr=1e-3,
        batch_size=4,
        epochs=2,
        patience=5,
        order="random",
        device="cpu",
    )
    settings.update(overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    return TrainConfig(**settings)
