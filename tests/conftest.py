"""Shared fixtures: the real RefCOCO sample beside the checkout (../shared/data), the tiny demo
pipelines. Fixtures that train a model (``TRAINING_FIXTURES``) mark their tests ``slow``."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsis.bench.pipeline import build_demo_pipeline
from tests.helpers import SAMPLE_ROOT

# Fixtures that train a model: every test that uses one is marked slow.
TRAINING_FIXTURES = frozenset({"trained", "run_dir", "tiny_workflow"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
    rules = ("--difficulty", "full")  # every expression kind
    return build_demo_pipeline(
        root, seed=3, counts=(8, 4, 4, 4), size=(48, 80), pca_dim=8, rules=rules
    )


@pytest.fixture(scope="session")
def learnable_demo(tmp_path_factory) -> Path:
    """The demo at the `colour` difficulty (up to 4 shapes, unique colours, attribute
    expressions): 150 train and 40 val images, cached at 48x84."""
    root = tmp_path_factory.mktemp("learnable_demo")
    rules = ("--max-objects=4", "--colour-reuse=0", "--templates", "attribute")
    counts = (150, 40, 1, 1)
    return build_demo_pipeline(root, seed=0, counts=counts, size=(48, 84), pca_dim=64, rules=rules)
