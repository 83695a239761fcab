"""A killed workflow resumes its training run: same metrics as an uninterrupted one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from snakemake.utils import update_config

from rsis.checkpoint import load_checkpoint
from tests.helpers import process_alive
from tests.test_workflow import REPO, TINY, _snakemake

RUN = "mean-pca-8-random-bs4/seed1"
TRAIN = f"results/demo/train/{RUN}"
LEARNED = ["epoch", "train_loss", "val_instance_iou", "val_overall_iou"]


def _one_run_workflow(workdir: Path) -> None:
    """The tiny demo with a single training run of 3 epochs (no early stop)."""
    for name in ("Snakefile", "workflow", "profiles"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, workdir / name)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, yaml.safe_load(TINY.read_text()))
    config["grid"]["table2"]["runs"] = [{"order": "random", "batch_size": 4}]
    config["seeds"] = [1]
    config["settings"]["demo"].update(epochs=3, patience=3)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.slow
def test_killed_training_resumes_to_the_uninterrupted_metrics(tmp_path):
    workdir = tmp_path / "killed"
    workdir.mkdir()
    _one_run_workflow(workdir)
    inputs = ["results/demo/cache/train.h5", "results/demo/cache/val.h5",
              "results/demo/text/mean~pca~8.h5"]  # fmt: skip
    _snakemake(workdir, *inputs)
    reference = tmp_path / "uninterrupted"
    shutil.copytree(workdir, reference, symlinks=True)

    target = f"{TRAIN}/bundle.pt"
    lock, last = workdir / TRAIN / ".lock", workdir / TRAIN / "last.pt"
    deadline = time.monotonic() + 900
    # a killed Snakemake cannot remove its temporary folder: keep it in the test's own
    temporary = tmp_path / "tmp"
    temporary.mkdir()

    def start_and_wait_for(path: Path) -> subprocess.Popen:
        snakemake = subprocess.Popen(
            ["snakemake", "--cores", "2", target],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "TMPDIR": str(temporary)},
        )
        while not (path.exists() and path.stat().st_size):
            assert snakemake.poll() is None, f"snakemake ended before writing {path}"
            assert time.monotonic() < deadline, f"{path} was never written"
            time.sleep(0.05)
        return snakemake

    # Kill only Snakemake (SIGKILL) once training started: the trainer must not live on.
    snakemake = start_and_wait_for(lock)
    trainer = int(lock.read_text())
    snakemake.kill()
    snakemake.wait()
    while process_alive(trainer):
        assert time.monotonic() < deadline, f"rsis train (pid {trainer}) outlived Snakemake"
        time.sleep(0.1)
    _snakemake(workdir, "--unlock")

    # Kill the whole process group (Snakemake, rsis train) once an epoch is saved.
    snakemake = start_and_wait_for(last)
    os.killpg(snakemake.pid, signal.SIGKILL)
    snakemake.wait()
    killed_at = load_checkpoint(last)["epoch"]
    assert killed_at < 2 and not (workdir / target).exists()

    _snakemake(workdir, "--unlock")
    _snakemake(workdir, target)
    log = next((workdir / "logs/demo/train").rglob("seed1*.log")).read_text()
    assert f"resumed from {TRAIN}/last.pt at epoch {killed_at + 1}" in log

    _snakemake(reference, target)
    resumed = pd.read_csv(workdir / TRAIN / "metrics.csv")[LEARNED]
    uninterrupted = pd.read_csv(reference / TRAIN / "metrics.csv")[LEARNED]
    assert list(resumed["epoch"]) == [0, 1, 2]
    pd.testing.assert_frame_equal(resumed, uninterrupted, check_exact=True)
    got = load_checkpoint(workdir / TRAIN / "best.pt")["model"]
    expected = load_checkpoint(reference / TRAIN / "best.pt")["model"]
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    # the declared outputs are complete: nothing left to do
    assert "Nothing to be done" in _snakemake(workdir, target, "-n")
