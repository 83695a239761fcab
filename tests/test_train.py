"""The trainer: checkpoints, resume equality, divergence, refusal of foreign checkpoints."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from rsis.checkpoint import load_checkpoint, load_trained_model
from rsis.cli import main
from rsis.data.cache import SequenceDataset, collate_sequences
from rsis.errors import UserError
from rsis.evaluate import evaluate
from rsis.inference import make_loader
from rsis.launch import torchrun_arguments
from rsis.metrics import MetricAccumulator
from rsis.model import RRIS, soft_iou_loss
from rsis.text import EmbeddingTable
from rsis.text.identity import text_identity
from rsis.train import Trainer, TrainingDiverged, _Distributed, compute_threads, train_step
from tests.helpers import make_train_config


@pytest.fixture(scope="module")
def trained(demo_pipeline, tmp_path_factory):
    """Two uninterrupted epochs."""
    cfg = make_train_config(demo_pipeline, tmp_path_factory.mktemp("full"))
    history = Trainer(cfg).run()
    return cfg, history


def test_checkpoints_and_metrics_are_written(trained):
    cfg, history = trained
    assert [row["epoch"] for row in history] == [0, 1]
    table = pd.read_csv(cfg.out_dir / "metrics.csv")
    assert list(table["epoch"]) == [0, 1]
    assert {"train_loss", "val_instance_iou", "images_per_s", "data_wait_share"} <= set(table)
    last = load_checkpoint(cfg.out_dir / "last.pt")
    best = load_checkpoint(cfg.out_dir / "best.pt")
    assert last["epoch"] == 1
    assert best["epoch"] == int(table["val_instance_iou"].idxmax())
    assert last["text"]["transform"] == "pca" and last["text"]["dim"] == 8
    assert (cfg.out_dir / "tensorboard").is_dir()
    assert not list(cfg.out_dir.glob(".*.tmp"))


def test_resumed_run_ends_with_identical_weights(demo_pipeline, trained, tmp_path):
    cfg, _ = trained
    first = make_train_config(demo_pipeline, tmp_path, epochs=1)
    Trainer(first).run()
    resumed = Trainer(make_train_config(demo_pipeline, tmp_path, epochs=2), resume=True)
    assert resumed.start_epoch == 1  # continues, does not retrain epoch 0 from scratch
    assert [row["epoch"] for row in resumed.run()] == [0, 1]
    expected = load_checkpoint(cfg.out_dir / "last.pt")["model"]
    got = load_checkpoint(tmp_path / "last.pt")["model"]
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_resume_refuses_another_architecture(demo_pipeline, trained):
    cfg, _ = trained
    other = make_train_config(demo_pipeline, cfg.out_dir, hidden=32)
    with pytest.raises(UserError, match=r"hidden: checkpoint has 16, this run has 32"):
        Trainer(other, resume=True)


def test_resume_refuses_another_text_pipeline(demo_pipeline, trained):
    cfg, _ = trained
    other = make_train_config(demo_pipeline, cfg.out_dir, transform="none", dim="native")
    with pytest.raises(UserError, match=r"transform: checkpoint has 'pca', this run has 'none'"):
        Trainer(other, resume=True)


def test_resume_refuses_other_training_settings(demo_pipeline, trained):
    cfg, _ = trained
    other = make_train_config(demo_pipeline, cfg.out_dir, lr=5e-4)
    with pytest.raises(UserError, match=r"lr: checkpoint has 0.001, this run has 0.0005"):
        Trainer(other, resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(demo_pipeline, tmp_path, monkeypatch):
    Trainer(make_train_config(demo_pipeline, tmp_path, epochs=1)).run()
    good = (tmp_path / "last.pt").read_bytes()
    import rsis.train

    real_loss = rsis.train.soft_iou_loss
    monkeypatch.setattr(rsis.train, "soft_iou_loss", lambda *a: real_loss(*a) * float("nan"))
    trainer = Trainer(make_train_config(demo_pipeline, tmp_path, epochs=2), resume=True)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 1, step 0 \(ref_ids"):
        trainer.run()
    assert (tmp_path / "last.pt").read_bytes() == good


class _TouchesAFile:
    """Unpickling it would create ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_checkpoints_load_without_unpickling_objects(tmp_path):
    """torch's zip format names the object it refuses; a bare pickle is refused as not a
    torch file; neither runs the payload's code."""
    ran = tmp_path / "ran"
    zipped, bare = tmp_path / "evil.pt", tmp_path / "evil-pickle.pt"
    torch.save({"format_version": 3, "x": _TouchesAFile(ran)}, zipped)
    bare.write_bytes(pickle.dumps({"format_version": 3, "x": _TouchesAFile(ran)}))
    with pytest.raises(
        UserError, match=r"evil\.pt: refused unread: it would build the Python object"
    ):
        load_checkpoint(zipped)
    with pytest.raises(UserError, match=r"evil-pickle\.pt: incomplete .* or not a torch file"):
        load_checkpoint(bare)
    assert not ran.exists()


def test_a_folder_or_text_file_is_no_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(UserError, match="is a folder: give a checkpoint or bundle written by"):
        load_checkpoint(tmp_path)
    with pytest.raises(UserError, match=r"notes\.pt: incomplete .* or not a torch file"):
        load_checkpoint(tmp_path / "notes.pt")


def test_evaluate_scores_every_referent(demo_pipeline, trained):
    cfg, history = trained
    text = EmbeddingTable.load(cfg.text)
    model, payload = load_trained_model(cfg.out_dir / "best.pt", text_identity(text))
    accumulator, _, predictions, _ = evaluate(
        model, payload, demo_pipeline / "cache/val.h5", text, expression="first"
    )
    summary = accumulator.summary()["metrics"]
    best = max(row["val_instance_iou"] for row in history)
    assert summary["instance_iou"] == pytest.approx(best, abs=1e-6)
    assert summary["n_referents"] == len(predictions.ref_id) > 0


@pytest.mark.slow
def test_two_process_ddp_training_writes_one_checkpoint(demo_pipeline, tmp_path):
    """torchrun with 2 CPU processes (gloo): DistributedDataParallel, rank 0 writes; its
    metrics.csv holds the whole job's training figures, from the shards each rank logged;
    torchrun leaves nothing in the temporary directory."""
    import subprocess
    import sys

    root = demo_pipeline
    command = [
        sys.executable, "-m", "torch.distributed.run", *torchrun_arguments(2), "-v", "train",
        "--run-id", "mean-pca-8-random-bs2",
        "--train-cache", str(root / "cache/train.h5"), "--val-cache", str(root / "cache/val.h5"),
        "--text", str(root / "text/mean~pca~8.h5"), "--out-dir", str(tmp_path),
        "--backbone", "resnet18", "--weights", "none", "--hidden", "16", "--epochs", "1",
        "--device", "cpu",
    ]  # fmt: skip
    temporary = tmp_path.parent / f"{tmp_path.name}-tmp"
    temporary.mkdir()
    environment = {**os.environ, "TMPDIR": str(temporary)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(temporary.iterdir()) == []  # no torchelastic_* folder left behind
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0
    (row,) = pd.read_csv(tmp_path / "metrics.csv").to_dict("records")
    shards = {
        int(rank): (float(loss), int(batches), int(images), float(seconds))
        for rank, loss, batches, images, seconds in re.findall(
            r"epoch 0, rank (\d) \(its shard\): loss (\S+) over (\d+) batches, (\d+) images "
            r"in (\S+) s",
            result.stderr,
        )
    }
    assert sorted(shards) == [0, 1], result.stderr[-3000:]
    assert shards[0][0] != pytest.approx(shards[1][0])  # rank 0's loss is not the job's
    batches = sum(shard[1] for shard in shards.values())
    loss = sum(shard[0] * shard[1] for shard in shards.values()) / batches
    assert row["train_loss"] == pytest.approx(loss, rel=1e-6)
    images = sum(shard[2] for shard in shards.values())
    assert images == 8  # the demo's train split: each rank trained on its half
    # each rank takes 1 image of the run's batch of 2, so a step sees 2 images, as in one
    # process (before: 2 per rank, 4 per step)
    assert [shards[rank][1] for rank in (0, 1)] == [4, 4]
    slowest = max(shard[3] for shard in shards.values())
    assert row["images_per_s"] == pytest.approx(images / slowest, rel=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock", "best.pt", "bundle.pt", "convergence.json", "last.pt", "metrics.csv",
        "resume_best.pt", "tensorboard",
    ]  # fmt: skip


def test_encoder_lr_zero_freezes_the_resnet(demo_pipeline, tmp_path):
    """encoder_lr 0: the ResNet has no optimizer group and no gradients; the decoder learns."""
    trainer = Trainer(make_train_config(demo_pipeline, tmp_path, encoder_lr=0.0, epochs=1))
    assert [group["name"] for group in trainer.optimizer.param_groups] == ["decoder"]
    encoder = {k: v.clone() for k, v in trainer.model.encoder.named_parameters()}
    decoder = {k: v.clone() for k, v in trainer.model.decoder.named_parameters()}
    trainer.run()
    for name, param in trainer.model.encoder.named_parameters():
        assert param.grad is None and torch.equal(param, encoder[name]), name
    changed = [
        name
        for name, param in trainer.model.decoder.named_parameters()
        if not torch.equal(param, decoder[name])
    ]
    assert len(changed) == len(decoder)


def test_activation_checkpointing_follows_the_setting_and_changes_no_weight(
    demo_pipeline, tmp_path
):
    """``auto`` checkpoints a model with a trainable encoder on CPU, not one with a frozen
    encoder; a step with it ends with the weights and batch-norm statistics of a step
    without it."""
    trainers = {
        mode: Trainer(
            make_train_config(demo_pipeline, tmp_path / mode, checkpoint_activations=mode)
        )
        for mode in ("auto", "always", "never")
    }
    frozen = Trainer(make_train_config(demo_pipeline, tmp_path / "frozen", encoder_lr=0.0))
    for mode, trainer in trainers.items():
        assert trainer.model.encoder.checkpointed == trainer.model.checkpointed_steps
        assert trainer.model.checkpointed_steps == (mode != "never"), mode
    assert not frozen.model.encoder.checkpointed and not frozen.model.checkpointed_steps
    batch = next(iter(make_loader(trainers["never"].train_set, batch_size=4)))
    states = {}
    for mode in ("always", "never"):
        trainer = trainers[mode]
        train_step(trainer.model.train(), trainer.optimizer, batch, trainer.device)
        states[mode] = trainer.model.state_dict()
    initial = trainers["auto"].model.state_dict()
    for key, value in states["never"].items():
        torch.testing.assert_close(states["always"][key], value, msg=key)
    assert not torch.equal(states["never"]["encoder.bn1.weight"], initial["encoder.bn1.weight"])
    assert not torch.equal(
        states["never"]["encoder.bn1.running_mean"], initial["encoder.bn1.running_mean"]
    )
    expected = r"checkpoint_activations \(--checkpoint-activations\) is 'sometimes': give one of"
    with pytest.raises(UserError, match=expected):
        make_train_config(demo_pipeline, tmp_path, checkpoint_activations="sometimes")


def test_steps_per_epoch_bounds_each_epoch(demo_pipeline, tmp_path):
    cfg = make_train_config(demo_pipeline, tmp_path, encoder_lr=0.0, steps_per_epoch=1)
    trainer = Trainer(cfg)
    assert len(trainer.train_set) > cfg.run.batch_size  # a whole epoch would take 2 steps or more
    steps = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda *args, **kwargs: steps.append(step(*args, **kwargs))
    assert [row["epoch"] for row in trainer.run()] == [0, 1]
    assert len(steps) == 2
    expected = r"steps_per_epoch \(--steps-per-epoch\) is 0: give an integer of at least 1"
    with pytest.raises(UserError, match=expected):
        make_train_config(demo_pipeline, tmp_path, steps_per_epoch=0)


def _rotated(text: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each image's expressions moved on by one referent: every referent gets another's."""
    rotated = text.clone()
    for row, count in enumerate(valid.sum(dim=1).tolist()):
        rotated[row, :count] = text[row, :count].roll(1, dims=0)
    return rotated


def _instance_iou(batches: list[dict], predict: Callable[[dict], torch.Tensor]) -> float:
    """Instance IoU over ``batches`` of the masks ``predict(batch)`` gives (B, R, H, W)."""
    accumulator = MetricAccumulator(resolution="network input")
    for batch in batches:
        valid = batch["valid"]
        accumulator.update(predict(batch)[valid], batch["masks"][valid], ids=batch["ref_id"][valid])
    return accumulator.summary()["metrics"]["instance_iou"]


def _model_masks(model: RRIS, rotate: bool = False) -> Callable[[dict], torch.Tensor]:
    """``model``'s masks in eval mode, fed each batch's text or its ``_rotated`` text."""

    def predict(batch: dict) -> torch.Tensor:
        model.eval()
        valid = batch["valid"]
        text = _rotated(batch["text"], valid) if rotate else batch["text"]
        with torch.no_grad():
            return model(batch["image"], text, valid) > 0

    return predict


def _every_shape(batch: dict) -> torch.Tensor:
    """For every referent, all the annotated shapes of its image."""
    union = (batch["masks"] * batch["valid"][..., None, None]).amax(dim=1, keepdim=True)
    return union.expand_as(batch["masks"]) > 0


@pytest.mark.slow
def test_model_learns_a_handful_of_demo_images(demo_pipeline):
    """Four generated demo images with their real expressions: instance IoU >= 0.9 (eval mode)
    within a bounded number of CPU steps, and the fit depends on the language."""
    text = EmbeddingTable.load(demo_pipeline / "text/mean~pca~8.h5")
    dataset = SequenceDataset(demo_pipeline / "cache/train.h5", text, order="dataset")
    batch = collate_sequences([dataset[i] for i in range(4)])
    valid = batch["valid"]
    torch.manual_seed(0)
    model = RRIS(backbone="resnet18", weights="none", hidden=64, text_dim=text.dim)
    optimizer = torch.optim.Adam(
        [
            {"params": model.encoder_parameters(), "lr": 1e-3},
            {"params": model.decoder_parameters(), "lr": 1e-2},
        ]
    )
    scores = []
    for step in range(600):
        model.train()
        loss = soft_iou_loss(model(batch["image"], batch["text"], valid), batch["masks"], valid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 19:
            scores.append(_instance_iou([batch], _model_masks(model)))
            if scores[-1] >= 0.9:
                break
    assert scores[0] < 0.5, "the model should not start out right"
    assert scores[-1] >= 0.9, f"instance IoU only {scores[-1]:.3f} after {step + 1} steps"
    # The language matters, not only the step index: with each image's expressions rotated by
    # one referent (same images, same order of steps), the masks no longer fit (0.91 -> 0.10).
    assert _instance_iou([batch], _model_masks(model, rotate=True)) < scores[-1] - 0.3


@pytest.mark.slow
def test_trained_model_uses_the_language_on_validation_data(learnable_demo, tmp_path):
    """Trained by ``rsis train``'s Trainer at the demo setting (12 epochs on 150 images), the
    model grounds unseen validation images: it beats segmenting every shape of the image
    (measured 0.46 against 0.28), and giving each referent another referent's expression of
    the same image drops it far below that (0.12)."""
    cfg = make_train_config(
        learnable_demo,
        tmp_path,
        dim=64,
        hidden=64,
        lr=5e-3,
        encoder_lr=0.0,
        batch_size=16,
        epochs=12,
        patience=12,
    )
    Trainer(cfg).run()
    text = EmbeddingTable.load(cfg.text)
    model, _ = load_trained_model(cfg.out_dir / "best.pt", text_identity(text))
    val = SequenceDataset(learnable_demo / "cache/val.h5", text, order="dataset")
    batches = list(make_loader(val, batch_size=8))
    everything = _instance_iou(batches, _every_shape)
    trained = _instance_iou(batches, _model_masks(model))
    rotated = _instance_iou(batches, _model_masks(model, rotate=True))
    assert trained > everything + 0.1, (trained, everything)
    assert rotated < trained - 0.2, (trained, rotated)


def test_each_process_computes_with_its_share_of_the_job_cpus_less_its_workers():
    assert compute_threads(12, processes=1, workers=8) == 4  # the paper's setting
    assert compute_threads(16, processes=2, workers=0) == 8  # torchrun, 2 GPUs
    assert compute_threads(2, processes=2, workers=0) == 1  # .ci/slurm's CPU torchrun
    assert compute_threads(2, processes=1, workers=8) == 1  # never below one thread


def test_bench_train_continues_a_trained_run_with_its_weights_and_adam_state(
    demo_pipeline, trained, capsys
):
    cfg, _ = trained
    argv = ["bench", "train", "--cache", str(demo_pipeline / "cache/train.h5"), "--text",
            str(cfg.text), "--batch-size", "4", "--steps", "1", "--rounds", "1",
            "--warmup", "0", "--pretrain-scenes", "2",
            "--start-from", str(cfg.out_dir / "last.pt")]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "last.pt (epoch 1): the before path keeps subnormal floats" in out
    assert re.search(r"ratio: [\d.]+x", out)
    assert main([*argv, "--threads", "2"]) == 2
    assert "--start-from with --threads 2" in capsys.readouterr().err


def test_each_torchrun_process_takes_its_share_of_the_runs_batch():
    assert _Distributed(rank=1, world_size=4).rank_batch_size(32) == 8
    with pytest.raises(UserError, match="batch size 32 does not split evenly over 3 torchrun"):
        _Distributed(rank=0, world_size=3).rank_batch_size(32)
