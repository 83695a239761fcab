"""A small demo run through the data and language stages, for benchmarks and tests."""

from __future__ import annotations

from pathlib import Path

from rsis.errors import UserError

SPLITS = ("train", "val", "testA", "testB")


def _rsis(*argv: str) -> None:
    """Run one ``rsis`` command in this process; fail loudly if it fails."""
    from rsis.cli import main

    if main(list(argv)) != 0:
        raise UserError(f"`rsis {' '.join(argv)}` failed (its error is printed above)")


def build_demo_pipeline(
    root: Path,
    *,
    seed: int,
    counts: tuple[int, int, int, int],
    size: tuple[int, int],
    pca_dim: int,
    rules: tuple[str, ...] = (),
    picture: tuple[int, int] = (64, 112),
) -> Path:
    """Generate a demo dataset under ``root`` and run the data and language stages on it.

    Leaves ``resources/demo`` (refer layout, ``picture``-sized images), ``cache/<split>.h5``
    at ``size`` for every split with images, and ``text/`` with tokens, embeddings (packaged
    MiniLM) and the reduce outputs ``mean~pca~<pca_dim>`` and ``mean~none~native``.

    Args:
        counts: train, val, testA and testB images.
        rules: extra ``rsis demo`` arguments (``--max-objects``, ``--templates``, ...).
    """
    demo = root / "resources/demo"
    splits = dict(zip(SPLITS, counts, strict=True))
    images = [f"--{split.lower()}-images={count}" for split, count in splits.items()]
    hw = ["--height", str(picture[0]), "--width", str(picture[1])]
    _rsis("demo", "--out", str(demo), "--seed", str(seed), *hw, *images, *rules)
    refer = ["--refs-root", str(demo), "--dataset", "demo", "--split-by", "unc"]
    for split in (split for split, count in splits.items() if count):
        hw = ["--height", str(size[0]), "--width", str(size[1])]
        out = ["--images", str(demo / "images"), "--out", str(root / f"cache/{split}.h5")]
        _rsis("prepare", *refer, "--split", split, *hw, *out)
    text = root / "text"
    tokens, embeddings = str(text / "tokens.h5"), str(text / "embeddings.h5")
    _rsis("tokenize", *refer, "--model", "minilm", "--out", tokens)
    _rsis("embed", "--tokens", tokens, "--model", "minilm", "--out", embeddings)
    for transform, dim in (("pca", str(pca_dim)), ("none", "native")):
        reduce = ["reduce", "--embeddings", embeddings, "--tokens", tokens, "--embedding", "mean"]
        out = str(text / f"mean~{transform}~{dim}.h5")
        _rsis(*reduce, "--transform", transform, "--dim", dim, "--out", out)
    return root
