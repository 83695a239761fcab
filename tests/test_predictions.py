"""The predictions file: RLE round trip and a clear error for another HDF5 file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from rsis.errors import UserError
from rsis.predictions import Predictions, encode_masks, load_predictions, save_predictions


def test_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((5, 7, 9)) < 0.4
    masks[2] = False
    predictions = Predictions(
        ref_id=np.arange(10, 15),
        sent_id=np.arange(100, 105),
        rles=encode_masks(masks),
        attrs={"split": "val", "order": "dataset"},
    )
    path = tmp_path / "predictions.h5"
    save_predictions(path, predictions)
    loaded = load_predictions(path)
    assert loaded.ref_id.tolist() == list(range(10, 15))
    assert loaded.sent_id.tolist() == list(range(100, 105))
    assert loaded.attrs == {"split": "val", "order": "dataset"}
    assert np.array_equal(loaded.masks(range(5)), masks)

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["ref_id"] = np.arange(3)
    with pytest.raises(UserError, match="missing sent_id, counts, size"):
        load_predictions(tmp_path / "other.h5")
