"""A frozen encoder runs in eval mode; its stored features give the live path's logits."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

from rsis.cli import main
from rsis.data.cache import SequenceDataset, collate_sequences
from rsis.errors import UserError
from rsis.features import FeatureStore, cache_images, write_features
from rsis.model import RRIS
from rsis.model.backbone import STAGES, build_backbone
from rsis.model.frozen import calibrate_batch_norm, encoder_digest
from rsis.text import EmbeddingTable
from rsis.train import Trainer
from tests.helpers import make_train_config

# Largest logit difference between stored float16 features and the live float32 encoder (the
# measured value is about 2e-3 on these random weights: float16 keeps 11 significant bits).
FLOAT16_LOGIT_TOLERANCE = 2e-2


@pytest.fixture(scope="module")
def frozen(demo_pipeline) -> RRIS:
    """A tiny RRIS with a frozen random encoder calibrated on the train split."""
    torch.manual_seed(0)
    text = EmbeddingTable.load(demo_pipeline / "text/mean~pca~8.h5")
    model = RRIS(backbone="resnet18", weights="none", hidden=16, text_dim=text.dim)
    model.freeze_encoder()
    calibrate_batch_norm(model.encoder, cache_images(demo_pipeline / "cache/train.h5"))
    return model.eval()


def _batch(root, split: str = "val") -> dict[str, torch.Tensor]:
    text = EmbeddingTable.load(root / "text/mean~pca~8.h5")
    dataset = SequenceDataset(root / f"cache/{split}.h5", text)
    return collate_sequences([dataset[i] for i in range(len(dataset))])


def test_frozen_encoder_stays_in_eval_mode_and_ignores_the_batch(frozen, demo_pipeline):
    frozen.train()
    assert frozen.decoder.training and not frozen.encoder.training
    assert not any(m.training for m in frozen.encoder.modules())
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    images = _batch(demo_pipeline)["image"]
    with torch.no_grad():
        alone = frozen.encoder.encode_images(images[:1])
        together = frozen.encoder.encode_images(images)
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a, b[:1], rtol=1e-4, atol=1e-4)
    frozen.eval()


def test_calibration_sets_running_statistics_to_the_batch_average(frozen, demo_pipeline):
    bn = frozen.encoder.bn1
    images = next(cache_images(demo_pipeline / "cache/train.h5", batch_size=1000))
    encoder = frozen.encoder
    with torch.no_grad():
        conv = encoder.conv1((images.float() / 255 - encoder.pixel_mean) / encoder.pixel_std)
    torch.testing.assert_close(bn.running_mean, conv.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1  # restored after calibration


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-4), ("float16", None)])
def test_stored_features_give_the_live_eval_logits(
    frozen, demo_pipeline, tmp_path, dtype, tolerance
):
    cache = demo_pipeline / "cache/val.h5"
    out = tmp_path / "val.h5"
    assert write_features(frozen.encoder, cache, out, dtype=dtype) == len(
        h5py.File(cache)["images"]
    )
    store = FeatureStore(out, cache, encoder_digest(frozen.encoder))
    batch = _batch(demo_pipeline)
    with torch.no_grad():
        live = frozen(batch["image"], batch["text"], batch["valid"])
        stored = store.batch(batch["image_row"], torch.device("cpu"))
        cached = frozen(batch["image"], batch["text"], batch["valid"], features=stored)
    valid = batch["valid"]
    difference = (live[valid] - cached[valid]).abs().max().item()
    assert difference <= (tolerance or FLOAT16_LOGIT_TOLERANCE)
    if dtype == "float16":
        assert difference > 0  # the rounding is real: float16 is not float32


def test_store_refuses_another_encoder_or_other_images(frozen, demo_pipeline, tmp_path):
    cache = demo_pipeline / "cache/val.h5"
    write_features(frozen.encoder, cache, tmp_path / "val.h5")
    with pytest.raises(UserError, match="another encoder"):
        FeatureStore(tmp_path / "val.h5", cache, "0" * 64)
    with pytest.raises(UserError, match="other images"):
        FeatureStore(
            tmp_path / "val.h5", demo_pipeline / "cache/testA.h5", encoder_digest(frozen.encoder)
        )


def test_features_command_refuses_an_uncalibrated_random_encoder(demo_pipeline, tmp_path, capsys):
    cache = str(demo_pipeline / "cache/val.h5")
    out = str(tmp_path / "val.h5")
    args = ["features", "--cache", cache, "--backbone", "resnet18", "--weights", "none"]
    assert main([*args, "--out", out]) == 2
    assert "calibrat" in capsys.readouterr().err
    assert not (tmp_path / "val.h5").exists()


def test_trainer_reads_stored_features_only_for_a_frozen_encoder(demo_pipeline, tmp_path):
    weights = tmp_path / "encoder.pt"
    assert main(["pretrain", "--out", str(weights), "--epochs", "0", "--scenes", "4",
                 "--height", "64", "--width", "112"]) == 0  # fmt: skip
    paths = {}
    for split in ("train", "val"):
        paths[split] = tmp_path / f"{split}.h5"
        args = ["--cache", str(demo_pipeline / f"cache/{split}.h5"), "--backbone", "resnet18"]
        assert main(["features", *args, "--weights", str(weights), "--out", str(paths[split])]) == 0
    stored = {"train_features": paths["train"], "val_features": paths["val"]}
    settings = dict(weights=str(weights), epochs=1, **stored)
    with pytest.raises(UserError, match="need --encoder-lr 0"):
        Trainer(make_train_config(demo_pipeline, tmp_path / "live", **settings))
    runs = {}
    for name, extra in (("cached", stored), ("live", {}), ("tampered", stored)):
        if name == "tampered":  # the stored images' features in reverse order: the run
            with h5py.File(paths["train"], "r+") as file:  # reads them, so its loss moves
                for stage in ("conv1", "layer1", "layer2", "layer3", "layer4"):
                    file[stage][...] = file[stage][...][::-1]
        cfg = make_train_config(
            demo_pipeline,
            tmp_path / name,
            weights=str(weights),
            encoder_lr=0.0,
            epochs=1,
            **extra,
        )
        runs[name] = Trainer(cfg).run()[0]
    # float16 features: the same training up to rounding
    assert runs["cached"]["train_loss"] == pytest.approx(runs["live"]["train_loss"], abs=1e-3)
    # training is deterministic: only what the run read from the file can move its loss
    assert runs["tampered"]["train_loss"] != runs["cached"]["train_loss"]
    assert runs["cached"]["val_instance_iou"] == pytest.approx(
        runs["live"]["val_instance_iou"], abs=0.02
    )


@pytest.mark.slow
def test_bench_train_prints_both_paths_their_ratio_and_one_off_costs(demo_pipeline, capsys):
    threads = torch.get_num_threads()
    argv = ["bench", "train", "--cache", str(demo_pipeline / "cache/train.h5"), "--text",
            str(demo_pipeline / "text/mean~pca~8.h5"), "--hidden", "16", "--batch-size", "4",
            "--steps", "1", "--rounds", "1", "--warmup", "0", "--pretrain-scenes", "2",
            "--bf16"]  # fmt: skip
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert re.search(r"before: +[\d.]+ images/s", out) and re.search(r"after: +[\d.]+", out)
    assert re.search(r"ratio: [\d.]+x", out)
    assert re.search(r"CPU: [\d.]+ / [\d.]+ images per CPU second: [\d.]+x", out)
    assert re.search(r"whole-batch: +[\d.]+ images/s", out)
    ended = re.search(
        r"ended sequences: [\d.]+x wall, [\d.]+x CPU, ([\d.]+)x fewer FLOPs .*, (\d+) of (\d+) "
        r"slots padding",
        out,
    )
    assert float(ended[1]) >= 1 and (float(ended[1]) > 1) == (int(ended[2]) > 0)
    assert int(ended[3]) > 0
    assert re.search(r"after-bf16: +[\d.]+ images/s", out)
    assert re.search(r"bf16: [\d.]+x wall, [\d.]+x CPU", out)
    flops = re.search(r"FLOPs: before ([\d.]+), after ([\d.]+) GFLOP per image", out)
    assert float(flops[1]) > float(flops[2]) > 0  # the encoder runs before only
    assert re.search(r"GFLOP/s effective = [\d.]+% of the fp32 matmul peak", out)
    assert re.search(r"calibration [\d.]+ s, feature caching [\d.]+ s \(8 images\)", out)


def test_features_command_threads_and_device(demo_pipeline, tmp_path, capsys):
    """--threads and --device cpu write the features that write_features computes."""
    weights = tmp_path / "encoder.pt"
    assert main(["pretrain", "--out", str(weights), "--epochs", "0", "--scenes", "4",
                 "--height", "64", "--width", "112"]) == 0  # fmt: skip
    cache = demo_pipeline / "cache/val.h5"
    args = ["features", "--cache", str(cache), "--backbone", "resnet18", "--weights", str(weights)]
    out, reference = tmp_path / "val.h5", tmp_path / "reference.h5"
    assert main([*args, "--out", str(out), "--threads", "1", "--device", "cpu"]) == 0
    write_features(build_backbone("resnet18", str(weights)), cache, reference)
    with h5py.File(out) as ours, h5py.File(reference) as theirs:
        for stage in STAGES:
            assert np.array_equal(ours[stage][:], theirs[stage][:]), stage
    assert main([*args, "--out", str(tmp_path / "x.h5"), "--device", "gpu0"]) == 2
    assert "--device 'gpu0': give" in capsys.readouterr().err
