"""The run specification: ids, grid expansion, text files and the settings' flags."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest
import yaml

from rsis.errors import UserError
from rsis.runs import NATIVE, RunSpec, TrainSettings, expand_grid, grid_tables
from rsis.train import register

GRID = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())["grid"]


def test_the_configured_grid_has_17_runs_whose_ids_round_trip():
    runs = expand_grid(GRID)
    assert len(runs) == 17
    assert list(runs)[:2] == ["pooled-none-native-random-bs32", "pooled-pca-128-random-bs32"]
    assert list(runs)[-1] == "mean-linear_pca-64-random-bs32"
    for run_id, run in runs.items():
        assert RunSpec.from_id(run_id) == run
        assert RunSpec.from_dict(run.to_dict() | {"name": run_id}) == run


def test_shared_runs_are_trained_once_and_extra_runs_join_their_table():
    table1, table2 = grid_tables(GRID)
    shared = set(table1.runs) & set(table2.runs)
    assert [run.id for run in shared] == ["mean-pca-64-random-bs32"]
    assert table1.runs[-1].transform == "linear_pca" and len(table1.runs) == 11
    assert len(table2.runs) == 7 and table2.fixed == {
        "embedding": "mean",
        "transform": "pca",
        "dim": 64,
    }


@pytest.mark.parametrize(
    ("run_id", "text", "pca", "proj_dim"),
    [
        ("mean-pca-64-random-bs32", "mean~pca~64.h5", None, None),
        ("pooled-none-native-area-bs16", "pooled~none~native.h5", None, None),
        ("mean-linear-128-random-bs32", "mean~none~native.h5", None, 128),
        ("mean-linear_pca-64-random-bs32", "mean~none~native.h5", "mean~pca~64.h5", 64),
    ],
)
def test_each_transform_reads_its_reduce_output(run_id, text, pca, proj_dim):
    run = RunSpec.from_id(run_id)
    assert (run.text_file, run.pca_file, run.proj_dim) == (text, pca, proj_dim)


def test_bad_runs_are_refused_naming_the_value():
    with pytest.raises(UserError, match="not of the form"):
        RunSpec.from_id("mean-pca-64-random")
    with pytest.raises(UserError, match="transform none takes dim 'native'"):
        RunSpec("mean", "none", 64, "random", 32)
    with pytest.raises(UserError, match="transform none takes dim"):
        RunSpec("mean", "pca", NATIVE, "random", 32)
    with pytest.raises(UserError, match="order 'reverse'"):
        RunSpec("mean", "pca", 64, "reverse", 32)


def test_a_run_refuses_another_reduce_output():
    run = RunSpec.from_id("mean-pca-64-random-bs32")
    identity = {"embedding": "mean", "transform": "pca", "dim": 64}
    run.check_text(identity, "mean~pca~64.h5")
    with pytest.raises(
        UserError, match=r"t.h5 holds mean~pca~8 embeddings, run .* reads mean~pca~64"
    ):
        run.check_text({**identity, "dim": 8}, "t.h5")
    native = RunSpec.from_id("pooled-linear-64-random-bs32")
    native.check_text({"embedding": "pooled", "transform": "none", "dim": 384}, "p.h5")


def test_the_rules_flags_give_back_the_settings():
    setting = {"backbone": "resnet18", "weights": "none", "lr": 5e-3, "encoder_lr": 0.0,
               "image_size": [48, 84], "text_model": "minilm"}  # fmt: skip
    settings = TrainSettings.from_setting(setting, seed=3)
    assert settings.seed == 3 and settings.hidden == TrainSettings().hidden
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    argv = ["train", "--run-id", "mean-pca-64-random-bs32", "--train-cache", "t.h5"]
    argv += ["--val-cache", "v.h5", "--text", "x.h5", "--out-dir", "o"]
    args = parser.parse_args([*argv, *shlex.split(settings.flags())])
    assert TrainSettings.from_args(args) == settings
