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
