"""Training curves: grouping runs (seeds) into configurations, best epochs, the command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rsis.cli import main
from rsis.errors import UserError
from rsis.figures.curves import group_runs, read_metrics


def write_run(path, iou, loss):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        {"epoch": range(len(iou)), "train_loss": loss, "val_instance_iou": iou, "x": 0.0}
    )
    frame.to_csv(path, index=False)
    return str(path)


def test_runs_with_one_label_become_mean_and_band(tmp_path):
    a = write_run(tmp_path / "a/metrics.csv", [0.1, 0.5, 0.4], [0.9, 0.5, 0.45])
    b = write_run(tmp_path / "b/metrics.csv", [0.3, 0.3], [0.8, 0.6])
    c = write_run(tmp_path / "c/metrics.csv", [0.2, 0.6, 0.6, 0.5], [0.7, 0.4, 0.3, 0.3])
    configs = group_runs([("pca", a), ("linear", c), ("pca", b)])
    assert [c.label for c in configs] == ["pca", "linear"]
    stats = configs[0].summary("val_instance_iou")
    assert stats["mean"].tolist() == pytest.approx([0.2, 0.4, 0.4])  # epoch 2: run a only
    assert stats["low"].tolist() == pytest.approx([0.1, 0.3, 0.4])
    assert stats["high"].tolist() == pytest.approx([0.3, 0.5, 0.4])
    assert configs[0].best_epochs() == [(1, 0.5), (0, 0.3)]  # first epoch of the maximum
    assert configs[1].best_epochs() == [(1, 0.6)]


def test_a_file_without_the_columns_is_refused(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(UserError, match=r"metrics.csv: not a training metrics file .*train_loss"):
        read_metrics(path)


def test_curves_command_draws_each_configuration(tmp_path, capsys):
    rng = np.random.default_rng(0)
    args = []
    for label, level in (("mean-pca-64-random-bs32", 0.6), ("pooled-none-native-random-bs32", 0.3)):
        for seed in range(2):
            iou = level * (1 - np.exp(-np.arange(8) / 2)) + rng.normal(0, 0.01, 8)
            path = tmp_path / f"{label}-s{seed}/metrics.csv"
            args += ["--run", label, write_run(path, iou, 1 - iou)]
    out = tmp_path / "curves.png"
    assert main(["curves", *args, "--title", "Table 1", "--out", str(out)]) == 0
    with Image.open(out) as png:
        assert png.size[0] == 1200
        colours = {tuple(p) for p in np.asarray(png.convert("RGB")).reshape(-1, 3)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # tab10 lines 1 and 2
    missing = ["curves", "--run", "x", str(tmp_path / "none.csv"), "--out", str(out)]
    assert main(missing) == 2
    assert f"{tmp_path / 'none.csv'}: no such file; give --run LABEL" in capsys.readouterr().err
