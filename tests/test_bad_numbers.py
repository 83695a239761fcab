"""Bad counts, sizes, seeds and learning rates end in one clear line (exit code 2), before
anything runs or is written: ``rsis prepare``, ``baselines``, ``pretrain``, ``probe``,
``figures`` and the ``rsis bench`` commands."""

from __future__ import annotations

import pytest
import torch

from rsis.cli import main
from rsis.data.demo.scenes import DIFFICULTIES
from rsis.data.pretext import PRETRAIN_STREAM, TASKS, render_scenes
from rsis.errors import UserError
from rsis.model.backbone import build_backbone
from rsis.pretrain import PretextHeads, pretrain_encoder

REFER = ["--refs-root", "refs", "--dataset", "refcoco"]
COMMANDS = {
    "prepare": ["prepare", *REFER, "--split", "val", "--out", "val.h5"],
    "baselines": ["baselines", *REFER, "--split", "val", "--height", "48", "--width", "84",
                  "--out-dir", "out"],
    "pretrain": ["pretrain", "--out", "encoder.pt"],
    "probe": ["probe", "--encoder", "random=none", "--out", "probe.json"],
    "figures": ["figures", "--predictions", "p.h5", *REFER, "--out", "fig.png"],
}  # fmt: skip

# (command, option, bad value, what the error line says after "'<value>' is not ")
REFUSED = [
    (["prepare"], "--height", "0", "a positive integer"),
    (["prepare"], "--height", "-5", "a positive integer"),
    (["prepare"], "--width", "0", "a positive integer"),
    (["baselines"], "--height", "0", "a positive integer"),
    (["baselines"], "--width", "-1", "a positive integer"),
    (["pretrain"], "--lr", "nan", "a learning rate above 0 and at most 1"),
    (["pretrain"], "--lr", "inf", "a learning rate above 0 and at most 1"),
    (["pretrain"], "--lr", "0", "a learning rate above 0 and at most 1"),
    (["pretrain"], "--lr", "1e308", "a learning rate above 0 and at most 1"),
    (["pretrain"], "--input-height", "0", "a positive integer"),
    (["pretrain"], "--input-width", "-3", "a positive integer"),
    (["pretrain"], "--epochs", "-1", "an integer of 0 or more"),
    (["pretrain"], "--scenes", "0", "a positive integer"),
    (["pretrain"], "--batch-size", "0", "a positive integer"),
    (["pretrain"], "--seed", "-1", f"a seed from 0 to {2**64 - 1}"),
    (["pretrain"], "--seed", str(2**64), f"a seed from 0 to {2**64 - 1}"),
    (["probe"], "--pixels-per-scene", "-1", "a positive integer"),
    (["probe"], "--input-height", "0", "a positive integer"),
    (["probe"], "--test-scenes", "0", "a positive integer"),
    (["probe"], "--fit-scenes", "0", "a positive integer"),
    (["probe"], "--seed", "x", f"a seed from 0 to {2**64 - 1}"),
    (["figures"], "--num-images", "-3", "a positive integer"),
    (["figures"], "--num-images", "0", "a positive integer"),
    (["bench", "metrics"], "--chunk", "0", "a positive integer"),
    (["bench", "metrics"], "--referents", "0", "a positive integer"),
    (["bench", "metrics"], "--height", "-8", "a positive integer"),
    (["bench", "loader"], "--batch-size", "0", "a positive integer"),
    (["bench", "loader"], "--height", "0", "a positive integer"),
    (["bench", "loader"], "--workers", "-1", "an integer of 0 or more"),
    (["bench", "loader"], "--images-direct", "0", "a positive integer"),
    (["bench", "precision"], "--steps", "0", "a positive integer"),
    (["bench", "precision"], "--warmup", "-1", "an integer of 0 or more"),
    (["bench", "train"], "--rounds", "0", "a positive integer"),
    (["bench", "train"], "--threads", "-2", "an integer of 0 or more"),
    (["bench", "embed"], "--repeats", "0", "a positive integer"),
    (["bench", "embed"], "--count", "-1", "an integer of 0 or more"),
]


def _refused(argv: list[str], capsys) -> str:
    """The last stderr line of ``rsis argv``, which must exit with code 2."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(("command", "option", "value", "kind"), REFUSED)
def test_a_bad_number_is_refused_in_one_line_naming_option_and_value(
    command, option, value, kind, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    argv = [*COMMANDS.get(command[0], command), option, value]
    error = _refused(argv, capsys)
    assert error == f"rsis {' '.join(command)}: error: argument {option}: {value!r} is not {kind}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "option"),
    [("prepare", "--out"), ("pretrain", "--out"), ("probe", "--out"), ("figures", "--out"),
     ("figures", "--inverse-out")],
)  # fmt: skip
def test_an_output_file_given_as_a_folder_is_refused(command, option, tmp_path, capsys):
    folder = f"{tmp_path}/"
    error = _refused([*COMMANDS[command], option, folder], capsys)
    assert error == (
        f"rsis {command}: error: argument {option}: {folder!r} ends with '/', so it names a "
        "folder: give a file name in it"
    )


def test_probe_refuses_too_few_fitting_pixels_and_writes_nothing(tmp_path, capsys):
    """One fitting pixel has no standard deviation: the probe crashed in L-BFGS before."""
    out = tmp_path / "probe.json"
    argv = ["probe", "--encoder", "random=none", "--out", str(out), "--fit-scenes", "1",
            "--test-scenes", "1", "--pixels-per-scene", "1"]  # fmt: skip
    assert main([*argv, "--height", "48", "--width", "84"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("rsis probe: error: the probes would be fitted on 1 and scored on ")
    assert error.endswith(
        " object pixels; they need at least 2 and 1: give more --fit-scenes, --pixels-per-scene "
        "or --test-scenes, or a larger input (--input-height, --input-width)"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "counts"),
    [(["pretrain", "--epochs", "0", "--scenes", "65"], "--scenes and --batch-size"),
     (["pretrain", "--epochs", "1", "--batch-size", "1", "--scenes", "2"],
      "--scenes and --batch-size"),
     (["probe", "--encoder", "random=none", "--fit-scenes", "1", "--test-scenes", "1"],
      "--fit-scenes")],
)  # fmt: skip
def test_a_batch_of_one_scene_on_a_1x1_last_stage_is_refused(command, counts, tmp_path, capsys):
    """At most 32x32 pixels the encoder's last stage is 1x1, where batch norm cannot train
    (or calibrate) on one scene: a ValueError from torch before the fix."""
    out = tmp_path / "out"
    size = ["--input-height", "32", "--input-width", "20", "--height", "48", "--width", "84"]
    assert main([*command, "--out", str(out), *size]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"rsis {command[0]}: error: input 32x20 (--input-height x --input-width) makes the "
        "encoder's last stage 1x1, where batch norm cannot train on a batch of one scene: give "
        f"an input over 32 pixels on one side, or {counts} that leave no batch of one scene"
    )
    assert list(tmp_path.iterdir()) == []


def test_pretraining_stops_with_a_clear_error_when_its_loss_is_not_finite():
    """A learning rate that blows the loss up to nan must not end in a nan encoder."""
    scenes = render_scenes(
        seed=0, stream=PRETRAIN_STREAM, count=4, picture_size=(48, 84), input_size=(48, 84),
        rules=DIFFICULTIES["colour"],
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", "none")
    with pytest.raises(UserError) as error:
        pretrain_encoder(encoder, scenes, epochs=2, batch_size=2, lr=1e30, seed=0)
    assert str(error.value) == (
        "the pretraining loss became nan in epoch 0: lower --lr (now 1e+30); no encoder was written"
    )


def test_a_batch_without_object_pixels_gives_a_finite_pretext_loss():
    """A tiny input can show no object in a batch: its attribute losses are left out, not nan."""
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", "none")
    images = torch.rand(2, 3, 2, 2)
    background = torch.zeros(2, len(TASKS), 2, 2, dtype=torch.long)
    loss = PretextHeads(encoder.channels).loss(encoder.encode_images(images), background)
    assert torch.isfinite(loss)
