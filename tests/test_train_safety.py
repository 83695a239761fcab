"""Training never loses a run to bad arguments, a kill, a rerun or a finished early stop."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import rsis.train
from rsis.checkpoint import load_checkpoint
from rsis.cli import build_parser, main
from rsis.convergence import EARLY_STOP, Convergence
from rsis.errors import UserError
from rsis.train import Trainer, TrainingDiverged
from tests.helpers import make_train_config, process_alive


def _train_args(root: Path, out_dir: Path, run_id: str = "mean-pca-8-random-bs4") -> list[str]:
    return ["train", "--run-id", run_id, "--train-cache", str(root / "cache/train.h5"),
            "--val-cache", str(root / "cache/val.h5"), "--text", str(root / "text/mean~pca~8.h5"),
            "--out-dir", str(out_dir), "--backbone", "resnet18", "--weights", "none",
            "--hidden", "16", "--device", "cpu", "--epochs", "1"]  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--max-referents", "0", "setting max_referents (--max-referents) is 0: give an integer "
         "of at least 1"),
        ("--epochs", "0", "setting epochs (--epochs) is 0: give an integer of at least 1"),
        ("--lr", "nan", "setting lr (--lr) is nan: give a finite number above 0"),
        ("--lr", "inf", "setting lr (--lr) is inf: give a finite number above 0"),
        ("--workers", "-1", "setting workers (--workers) is -1: give an integer of at least 0"),
        ("--steps-per-epoch", "0", "setting steps_per_epoch (--steps-per-epoch) is 0"),
        ("--weight-decay", "inf", "setting weight_decay (--weight-decay) is inf: give a finite "
         "number of at least 0"),
        ("--encoder-lr", "-1", "setting encoder_lr (--encoder-lr) is -1.0: give a finite number "
         "of at least 0"),
        ("--seed", "-1", "setting seed (--seed) is -1: give an integer of at least 0"),
    ],
)  # fmt: skip
def test_out_of_range_settings_are_named(demo_pipeline, tmp_path, capsys, flag, value, expected):
    out = tmp_path / "run"
    assert main([*_train_args(demo_pipeline, out), flag, value]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rsis train: error: {expected}"), lines
    assert not out.exists()


def test_batch_size_zero_is_refused_naming_it(demo_pipeline, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(demo_pipeline, out, run_id="mean-pca-8-random-bs0")) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == "rsis train: error: run batch size 0 must be at least 1"
    assert not out.exists()


def test_divergence_before_any_checkpoint_names_no_file(
    demo_pipeline, tmp_path, capsys, monkeypatch
):
    """A NaN loss in the first epoch (as --lr 1e30 gives): nothing was saved, and the message
    says so instead of naming a last.pt that does not exist."""
    real_loss = rsis.train.soft_iou_loss
    monkeypatch.setattr(rsis.train, "soft_iou_loss", lambda *a: real_loss(*a) * float("nan"))
    assert main([*_train_args(demo_pipeline, tmp_path), "--lr", "1e30"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("rsis train: error: loss is nan at epoch 0, step 0")
    assert "no epoch finished, so no checkpoint was written. Lower --lr (now 1e+30)" in error
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    assert issubclass(TrainingDiverged, UserError)


def _constant_validation(monkeypatch) -> None:
    """Validation IoU that never improves after epoch 0: patience 1 stops at epoch 1."""
    scores = {"instance_iou": 0.5, "overall_iou": 0.4}
    monkeypatch.setattr(rsis.train, "validate", lambda *args: dict(scores))


def test_resume_after_an_early_stop_only_exports(demo_pipeline, tmp_path, monkeypatch):
    _constant_validation(monkeypatch)
    history = Trainer(make_train_config(demo_pipeline, tmp_path, epochs=6, patience=1)).run()
    assert [row["epoch"] for row in history] == [0, 1]  # stopped early at epoch 1
    files = {name: (tmp_path / name).read_bytes() for name in ("best.pt", "last.pt")}
    for name in ("bundle.pt", "metrics.csv", "convergence.json"):
        (tmp_path / name).unlink()
    resumed = Trainer(make_train_config(demo_pipeline, tmp_path, epochs=10, patience=1), True)
    assert resumed.stopped_early
    assert [row["epoch"] for row in resumed.run()] == [0, 1]
    for name, content in files.items():
        assert (tmp_path / name).read_bytes() == content, f"{name} was rewritten"
    assert load_checkpoint(tmp_path / "bundle.pt")["source"]["epoch"] == 0
    assert list(pd.read_csv(tmp_path / "metrics.csv")["epoch"]) == [0, 1]
    record = Convergence.read(tmp_path / "convergence.json")  # rewritten, as the run ended
    assert (record.reason, record.best_epoch, record.epochs_run) == (EARLY_STOP, 0, 2)


def test_a_larger_patience_continues_a_stopped_run_as_a_fresh_one_would(
    demo_pipeline, tmp_path, monkeypatch
):
    """Stopped early at patience 1, resumed at patience 3: it trains on to the same epoch and
    the same weights as a run started at patience 3, and its record says so."""
    _constant_validation(monkeypatch)
    stopped, fresh = tmp_path / "stopped", tmp_path / "fresh"
    Trainer(make_train_config(demo_pipeline, stopped, epochs=6, patience=1)).run()
    resumed = Trainer(make_train_config(demo_pipeline, stopped, epochs=6, patience=3), True)
    assert not resumed.stopped_early and resumed.start_epoch == 2  # goes on from epoch 2
    assert [row["epoch"] for row in resumed.run()] == [0, 1, 2, 3]
    Trainer(make_train_config(demo_pipeline, fresh, epochs=6, patience=3)).run()
    ours, theirs = (load_checkpoint(folder / "last.pt")["model"] for folder in (stopped, fresh))
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    record = json.loads((stopped / "convergence.json").read_text())
    assert (record["reason"], record["epochs_run"], record["patience"]) == ("early stop", 4, 3)


def test_a_run_on_other_input_files_starts_over_or_is_refused(demo_pipeline, tmp_path, caplog):
    """The workflow reruns a training when an input changed (new data, features, PCA); its
    last.pt was learned from the old files, so --resume auto starts over and --resume refuses,
    naming the file that changed."""
    Trainer(make_train_config(demo_pipeline, tmp_path, epochs=1)).run()
    other = make_train_config(
        demo_pipeline, tmp_path, epochs=2, train_cache=demo_pipeline / "cache/testA.h5"
    )
    message = f"{tmp_path / 'last.pt'} was trained on other input files (train_cache)"
    with pytest.raises(UserError, match=re.escape(message)):
        Trainer(other, resume=True)
    with caplog.at_level(logging.WARNING, logger="rsis"):
        fresh = Trainer(other, resume=True, restart_if_changed=True)
    assert fresh.start_epoch == 0 and message in caplog.text
    assert [row["epoch"] for row in fresh.run()] == [0, 1]
    again = Trainer(other, resume=True)  # the same files: it resumes
    assert again.start_epoch == 2 and again.stopped_early is False


def test_a_lower_patience_than_the_run_had_starts_over(demo_pipeline, tmp_path, monkeypatch):
    """Ran to epoch 3 at patience 3; at patience 1 a fresh run ends at epoch 1: resuming would
    keep two epochs (and possibly a best epoch) that run never has, so it starts over."""
    _constant_validation(monkeypatch)
    Trainer(make_train_config(demo_pipeline, tmp_path, epochs=6, patience=3)).run()
    lower = make_train_config(demo_pipeline, tmp_path, epochs=6, patience=1)
    with pytest.raises(UserError, match="ran to epoch 3, past epoch 1, where --epochs 6, "):
        Trainer(lower, resume=True)
    restarted = Trainer(lower, resume=True, restart_if_changed=True)
    assert restarted.start_epoch == 0
    assert [row["epoch"] for row in restarted.run()] == [0, 1]
    record = Convergence.read(tmp_path / "convergence.json")
    assert (record.epochs_run, record.patience) == (2, 1)


def test_a_plateau_from_the_start_runs_the_minimum_epochs(demo_pipeline, tmp_path, monkeypatch):
    _constant_validation(monkeypatch)
    cfg = make_train_config(demo_pipeline, tmp_path, epochs=6, patience=1, min_epochs=3)
    assert [row["epoch"] for row in Trainer(cfg).run()] == [0, 1, 2]  # patience alone: [0, 1]
    record = Convergence.read(tmp_path / "convergence.json")
    assert (record.reason, record.min_epochs, record.best_epoch) == (EARLY_STOP, 3, 0)


def test_resume_restores_best_deleted_by_a_failed_job(demo_pipeline, tmp_path, monkeypatch):
    """Snakemake deletes a failed job's declared outputs (best.pt, metrics.csv, bundle.pt);
    last.pt and the hard link resume_best.pt are not declared, so the run resumes whole."""
    _constant_validation(monkeypatch)
    Trainer(make_train_config(demo_pipeline, tmp_path, epochs=2, patience=5)).run()
    best = (tmp_path / "best.pt").read_bytes()
    assert os.path.samefile(tmp_path / "best.pt", tmp_path / "resume_best.pt")
    for name in ("best.pt", "metrics.csv", "bundle.pt", "convergence.json"):
        (tmp_path / name).unlink()
    history = Trainer(make_train_config(demo_pipeline, tmp_path, epochs=3, patience=5), True).run()
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert (tmp_path / "best.pt").read_bytes() == best  # epoch 0 stays the best
    assert list(pd.read_csv(tmp_path / "metrics.csv")["epoch"]) == [0, 1, 2]
    assert (tmp_path / "bundle.pt").exists()


def test_auto_resume_starts_over_when_the_settings_changed(demo_pipeline, tmp_path):
    Trainer(make_train_config(demo_pipeline, tmp_path, epochs=1)).run()
    other = make_train_config(demo_pipeline, tmp_path, epochs=1, lr=5e-4)
    with pytest.raises(UserError, match=r"lr: checkpoint has 0\.001, this run has 0\.0005"):
        Trainer(other, resume=True)
    trainer = Trainer(other, resume=True, restart_if_changed=True)
    assert trainer.start_epoch == 0 and trainer.saved_epoch is None
    trainer.run()
    assert load_checkpoint(tmp_path / "last.pt")["settings"]["lr"] == 5e-4
    assert len(list((tmp_path / "tensorboard").iterdir())) == 1  # the old attempt's events went


def test_second_trainer_on_the_same_run_is_refused(demo_pipeline, tmp_path):
    """An orphaned `rsis train` still holding the run folder: a rerun refuses to write there."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from rsis.process import exclusive_folder\n"
         f"with exclusive_folder(Path({str(tmp_path)!r}), 'rsis train'):\n"
         "    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = build_parser("train").parse_args(_train_args(demo_pipeline, tmp_path))
        with pytest.raises(UserError, match=rf"in use by another rsis train \(pid {holder.pid}\)"):
            args.func(args)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "last.pt").exists()


def test_train_exits_when_its_parent_shell_dies(demo_pipeline, tmp_path):
    """Snakemake runs `bash -c 'rsis train ...'`; killing that shell ends the trainer."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = " ".join(_train_args(demo_pipeline, tmp_path)).replace("--epochs 1", "--epochs 50")
    shell = subprocess.Popen(
        ["bash", "-c", f"{sys.executable} -m rsis.cli {args} 2> {tmp_path}/log; true"],
        env=env,
        start_new_session=True,
    )
    lock = tmp_path / ".lock"
    deadline = time.monotonic() + 300
    while not lock.exists() or not lock.read_text().strip():
        assert shell.poll() is None, (tmp_path / "log").read_text()[-2000:]
        assert time.monotonic() < deadline, "the trainer did not start"
        time.sleep(0.1)
    trainer = int(lock.read_text())
    os.kill(shell.pid, signal.SIGKILL)
    shell.wait()
    while process_alive(trainer):
        assert time.monotonic() < deadline, f"rsis train (pid {trainer}) outlived its shell"
        time.sleep(0.1)


def test_ctrl_c_is_one_line_and_the_rerun_resumes(demo_pipeline, tmp_path, caplog):
    """SIGINT after the first epoch: exit 130 with one line, and --resume continues. The run
    could go on for 10^5 epochs (early stopping held off too), so the signal ends it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    endless = ["--epochs", "100000", "--patience", "100000"]
    args = [*_train_args(demo_pipeline, tmp_path)[:-2], *endless]
    trainer = subprocess.Popen(
        [sys.executable, "-m", "rsis.cli", *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a shell running the tests in the background ignores SIGINT in
        # its children, and Python keeps an inherited "ignore"
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "last.pt").exists():
            assert trainer.poll() is None, trainer.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.1)
        trainer.send_signal(signal.SIGINT)
        _, error = trainer.communicate(timeout=120)
    finally:
        trainer.kill()  # nothing is left running whatever failed above
        trainer.wait()
    assert trainer.returncode == 130
    assert error.strip().splitlines()[-1].startswith("rsis train: interrupted; no half-written")
    assert "Traceback" not in error
    finished = load_checkpoint(tmp_path / "last.pt")["epoch"]
    rerun = [*args[:-4], "--epochs", str(finished + 2), "--patience", "100000"]
    with caplog.at_level(logging.INFO, logger="rsis"):
        assert main([*rerun, "--resume"]) == 0
    assert f"resumed from {tmp_path / 'last.pt'} at epoch {finished + 1}" in caplog.text
    assert list(pd.read_csv(tmp_path / "metrics.csv")["epoch"]) == list(range(finished + 2))
