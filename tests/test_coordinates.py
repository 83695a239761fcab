"""Our decoder variant with x, y coordinate channels: run ids, the model, checkpoints, the
workflow, and the tables and findings that keep it apart from the paper's rows."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from rsis.checkpoint import load_checkpoint, load_trained_model
from rsis.errors import UserError
from rsis.findings import check_claims
from rsis.model import RRIS
from rsis.model.decoder import coordinate_maps
from rsis.runs import RunSpec, expand_grid, grid_tables
from rsis.text import EmbeddingTable
from rsis.text.identity import text_identity
from rsis.train import Trainer
from tests.helpers import make_train_config
from tests.test_findings import TABLE1_FIXED, TABLE2_FIXED, hand_made_frame
from tests.test_tables import BEST, GRID, run_tables, write_fixture
from tests.test_workflow import _dry_run_with_resources, job_counts

COORD = {**BEST, "batch_size": 16, "decoder": "coord"}
COORD_RUN = {key: value for key, value in COORD.items() if key != "seed"}


def test_a_coord_run_id_round_trips_and_a_bad_decoder_is_refused():
    run = RunSpec.from_id("mean-pca-64-random-bs16-coord")
    assert run.decoder == "coord" and run.id == "mean-pca-64-random-bs16-coord"
    assert RunSpec.from_id("mean-pca-64-random-bs16").decoder == "paper"
    assert RunSpec.from_dict(run.to_dict()) == run
    with pytest.raises(UserError, match="not of the form"):
        RunSpec.from_id("mean-pca-64-random-bs16-film")
    with pytest.raises(UserError, match="run decoder 'film': use one of"):
        RunSpec("mean", "pca", 64, "random", 16, decoder="film")


def test_coordinate_maps_run_from_minus_one_to_one_across_and_down():
    like = torch.zeros(2, 5, 3, 4)
    maps = coordinate_maps(like)
    assert maps.shape == (2, 2, 3, 4)
    assert maps[1, 0, 2].tolist() == pytest.approx([-1.0, -1 / 3, 1 / 3, 1.0])  # x: columns
    assert maps[0, 1, :, 3].tolist() == [-1.0, 0.0, 1.0]  # y: rows
    channels_last = like.contiguous(memory_format=torch.channels_last)
    assert coordinate_maps(channels_last).is_contiguous(memory_format=torch.channels_last)


def test_the_coord_decoder_reads_the_skip_features_and_their_coordinates():
    paper = RRIS(backbone="resnet18", weights="none", hidden=16, text_dim=3)
    ours = RRIS(backbone="resnet18", weights="none", hidden=16, text_dim=3, decoder="coord")
    features = paper.encoder(torch.rand(2, 3, 48, 84))
    skips = ours.decoder.project(features)
    for skip, cell, plain in zip(skips, ours.decoder.cells, paper.decoder.cells, strict=True):
        assert skip.shape[1] == cell.fixed == plain.fixed + 2
        torch.testing.assert_close(skip[:, -2:], coordinate_maps(skip), rtol=0, atol=0)
    logits = ours(torch.rand(2, 3, 48, 84), torch.randn(2, 4, 3))
    assert logits.shape == (2, 4, 48, 84) and torch.isfinite(logits).all()
    with pytest.raises(UserError, match="model decoder 'film'"):
        RRIS(backbone="resnet18", weights="none", hidden=16, text_dim=3, decoder="film")


def test_a_coord_run_trains_and_its_checkpoint_rebuilds_it(demo_pipeline, tmp_path):
    cfg = make_train_config(demo_pipeline, tmp_path / "run", decoder="coord", epochs=1)
    trainer = Trainer(cfg)
    trainer.run()
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["model_config"]["decoder"] == "coord"
    assert RunSpec.from_dict(payload["run"]).id == "mean-pca-8-random-bs4-coord"
    text = text_identity(EmbeddingTable.load(cfg.text))
    model, _ = load_trained_model(tmp_path / "run" / "last.pt", text)
    assert model.decoder.coordinates
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_a_coord_extra_run_gets_its_own_row_and_the_paper_rows_keep_theirs(tmp_path):
    grid = {**GRID, "extra": [*GRID["extra"], COORD_RUN]}
    _, table2 = grid_tables(grid)
    assert table2.fields == ("order", "batch_size", "decoder")
    fixture = [
        ({**BEST, "batch_size": 16}, "val", "first", 0.40, 0.40),
        (COORD, "val", "first", 0.50, 0.50),
    ]
    out = run_tables(write_fixture(tmp_path, fixture), tmp_path / "tables", grid)
    table = pd.read_csv(out / "table2.csv")
    bs16 = table[(table["order"] == "random") & (table["batch_size"] == 16)]
    assert bs16["decoder"].tolist() == ["paper", "coord"]
    assert bs16["instance_iou_val_mean"].tolist() == [40.0, 50.0]
    assert bs16["instance_iou_val_paper"].tolist()[0] == 42.66
    assert pd.isna(bs16["instance_iou_val_paper"].tolist()[1])
    text = (out / "table2.md").read_text()
    assert "| Random           | 16           | RRIS + x, y channels (ours) | 50.00 (—)" in text
    # without a coord run, the tables keep their columns
    assert grid_tables(GRID)[1].fields == ("order", "batch_size")


def test_the_findings_leave_coord_runs_out():
    frame = hand_made_frame()
    expected = check_claims(frame, TABLE1_FIXED, TABLE2_FIXED)
    ours = frame[(frame["order"] == "random") & (frame["batch_size"] == 16)]
    # would reverse the batch trend and move the first-vs-random gap by 40 points
    ours = ours.assign(decoder="coord", instance_iou=99.0)
    ours.loc[ours["expression"] == "random", "overall_iou"] = 99.0
    mixed = pd.concat([frame, ours], ignore_index=True)
    assert check_claims(mixed, TABLE1_FIXED, TABLE2_FIXED) == expected


def test_the_workflow_trains_a_coord_extra_run_per_seed(tmp_path):
    runs = expand_grid({**GRID, "extra": [COORD_RUN]})
    assert "mean-pca-64-random-bs16-coord" in runs
    result = _dry_run_with_resources(tmp_path, {}, grid={"extra": [COORD_RUN]})
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout)["train"] == 17 * 3  # the coord run replaces linear_pca
    assert "--run-id mean-pca-64-random-bs16-coord" in result.stdout
