"""Checkpoints of a frozen encoder loaded from a file leave it out and rebuild it from the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rsis.bundle import BUNDLE_KIND, export_bundle, load_bundle
from rsis.checkpoint import FORMAT_VERSION, load_checkpoint, load_trained_model, save_checkpoint
from rsis.cli import main
from rsis.errors import UserError
from rsis.model import RRIS
from rsis.model.rris import ENCODER_PREFIX
from rsis.text import EmbeddingTable
from rsis.text.identity import text_identity
from rsis.train import Trainer
from tests.helpers import make_train_config


def _pretrained(path: Path, seed: int) -> Path:
    """A tiny stand-in for the demo's pretrained encoder (calibrated, not trained)."""
    assert main(["pretrain", "--out", str(path), "--epochs", "0", "--scenes", "4",
                 "--seed", str(seed), "--height", "64", "--width", "112"]) == 0  # fmt: skip
    return path


@pytest.fixture(scope="module")
def frozen_run(demo_pipeline, tmp_path_factory) -> tuple[Path, Path, Trainer]:
    """One epoch with a frozen encoder from a weights file; its folder, weights and trainer."""
    root = tmp_path_factory.mktemp("frozen_run")
    weights = _pretrained(root / "encoder.pt", seed=1)
    cfg = make_train_config(
        demo_pipeline, root / "run", weights=str(weights), encoder_lr=0.0, epochs=1
    )
    trainer = Trainer(cfg)
    trainer.run()
    return cfg.out_dir, weights, trainer


def _text(demo_pipeline: Path) -> dict:
    return text_identity(EmbeddingTable.load(demo_pipeline / "text/mean~pca~8.h5"))


def test_checkpoints_hold_no_frozen_encoder_and_name_it_by_digest(frozen_run):
    run, _, trainer = frozen_run
    full = trainer.model.state_dict()
    for name in ("best.pt", "last.pt"):
        payload = load_checkpoint(run / name)
        assert payload["format_version"] == FORMAT_VERSION
        assert payload["encoder_digest"] == trainer.encoder_digest
        assert not [key for key in payload["model"] if key.startswith(ENCODER_PREFIX)]
        decoder = {key for key in full if not key.startswith(ENCODER_PREFIX)}
        assert set(payload["model"]) == decoder
    # the ResNet-18 is most of the model: the checkpoint is a fraction of the full state's size
    size = sum(
        t.numel() * t.element_size() for t in load_checkpoint(run / "best.pt")["model"].values()
    )
    assert size < 0.2 * sum(t.numel() * t.element_size() for t in full.values())


def test_loading_rebuilds_the_trained_model_from_the_weights_file(
    demo_pipeline, frozen_run, tmp_path
):
    run, _, trainer = frozen_run
    model, _ = load_trained_model(run / "last.pt", _text(demo_pipeline))
    expected = trainer.model.state_dict()
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    # the bundle stays self-contained: it holds the encoder and needs no weights file
    export_bundle(run / "last.pt", demo_pipeline / "text/mean~pca~8.h5", tmp_path / "b.pt")
    bundled, _ = load_bundle(tmp_path / "b.pt")
    assert any(
        key.startswith(ENCODER_PREFIX) for key in load_checkpoint(tmp_path / "b.pt")["model"]
    )
    for key, value in bundled.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_a_changed_or_missing_weights_file_is_refused(demo_pipeline, frozen_run, tmp_path):
    run, weights, _ = frozen_run
    checkpoint = tmp_path / "best.pt"
    shutil.copy(run / "best.pt", checkpoint)
    original = weights.read_bytes()
    try:
        _pretrained(weights, seed=2)  # other weights under the same name
        with pytest.raises(UserError, match=r"best.pt was trained on the frozen encoder .*other"):
            load_trained_model(checkpoint, _text(demo_pipeline))
        weights.unlink()
        with pytest.raises(UserError, match=r"best.pt leaves its frozen encoder .* does not exist"):
            load_trained_model(checkpoint, _text(demo_pipeline))
    finally:
        weights.write_bytes(original)


def test_a_resumed_frozen_run_ends_as_an_uninterrupted_one(demo_pipeline, frozen_run, tmp_path):
    _, weights, _ = frozen_run
    settings = dict(weights=str(weights), encoder_lr=0.0)
    whole = Trainer(make_train_config(demo_pipeline, tmp_path / "whole", epochs=2, **settings))
    whole.run()
    Trainer(make_train_config(demo_pipeline, tmp_path / "split", epochs=1, **settings)).run()
    config = make_train_config(demo_pipeline, tmp_path / "split", epochs=2, **settings)
    resumed = Trainer(config, resume=True)
    assert resumed.start_epoch == 1  # continues, does not retrain epoch 0 from scratch
    resumed.run()
    expected = load_checkpoint(tmp_path / "whole/last.pt")["model"]
    got = load_checkpoint(tmp_path / "split/last.pt")["model"]
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_a_format_2_checkpoint_with_the_whole_model_still_loads(
    demo_pipeline, frozen_run, tmp_path
):
    run, _, trainer = frozen_run
    payload = load_checkpoint(run / "best.pt")
    payload.pop("encoder_digest")
    payload |= {"format_version": 2, "model": trainer.model.state_dict()}
    torch.save(payload, tmp_path / "old.pt")
    model, _ = load_trained_model(tmp_path / "old.pt", _text(demo_pipeline))
    assert isinstance(model, RRIS)
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_export_refuses_a_bundle_as_its_checkpoint(demo_pipeline, tmp_path, capsys):
    bundle = tmp_path / "bundle.pt"
    save_checkpoint(bundle, {"kind": BUNDLE_KIND, "model": {}, "text": {}})
    argv = ["export", "--checkpoint", str(bundle), "--out", str(tmp_path / "again.pt")]
    assert main([*argv, "--text", str(demo_pipeline / "text/mean~pca~8.h5")]) == 2
    error = capsys.readouterr().err
    assert (
        f"rsis export: error: {bundle} is a model bundle (what `rsis export` writes), not a "
        "training checkpoint: give the run's best.pt or last.pt" in error
    )
    assert not (tmp_path / "again.pt").exists()
