"""Bad model files and text end in one clear line (exit code 2): expressions that are not
UTF-8 text, backbone weights that cannot be read or do not fit, and altered bundle fields.

Every model here is built in the test (a random ResNet-18 network, the real minilm text
model), none is trained.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from transformers import AutoConfig

from rsis.bundle import BUNDLE_KIND, REEXPORT, load_bundle
from rsis.checkpoint import save_checkpoint
from rsis.cli import main
from rsis.errors import UserError
from rsis.model import RRIS, build_backbone, input_spec
from rsis.text.models import load_tokenizer, resolve_model, weights_hash
from rsis.text.tokenize import encode

WEIGHTS_FILE = "a torchvision ResNet state_dict file (torch.save), 'imagenet' or 'none'"
UTF8 = "a byte that is not UTF-8 or a lone surrogate escape); give the expression as UTF-8 text"


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    """Run ``rsis`` with ``argv``, expect exit code 2 and return the lines of its stderr."""
    assert main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small RGB photo."""
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# --- expressions that are not UTF-8 text ---------------------------------------------------


def test_an_expression_with_bytes_that_are_not_utf8_is_one_line(photo, tmp_path):
    """The real command line: ``--expr $'caf\\xe9 red'`` arrives as ``'caf\\udce9 red'``."""
    out = tmp_path / "out"
    argv = ["--model", str(tmp_path / "never-read.pt"), "--image", str(photo), "--out", str(out)]
    expressions = ["--expr", "sky", "--expr", b"caf\xe9 red"]
    result = subprocess.run(
        [sys.executable, "-m", "rsis.cli", "predict", *argv, *expressions],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"rsis predict: error: job 1 ({photo}): expression 2 'caf\\udce9 red' is not UTF-8 text "
        f"(character 4 is '\\udce9', {UTF8}"
    ]
    assert not out.exists()


def test_a_lone_surrogate_escape_in_a_batch_line_is_one_line(photo, tmp_path, capsys):
    batch = tmp_path / "jobs.jsonl"
    batch.write_text(f'{{"image": "{photo}", "expressions": ["red \\udcff"]}}\n')
    argv = ["predict", "--model", str(tmp_path / "never-read.pt"), "--batch", str(batch)]
    assert _error(capsys, [*argv, "--out", str(tmp_path / "out")]) == [
        f"rsis predict: error: job 1 ({photo}): expression 1 'red \\udcff' is not UTF-8 text "
        f"(character 5 is '\\udcff', {UTF8}"
    ]


def test_encode_refuses_text_that_is_not_utf8():
    """What ``rsis tokenize`` and ``Predictor`` call: the tokenizer never sees it."""
    tokenizer = load_tokenizer(resolve_model("minilm"))
    ids, ptr, _ = encode(tokenizer, ["café red"], 32)
    assert len(ids) == ptr[-1] > 2
    with pytest.raises(UserError) as error:
        encode(tokenizer, ["sky", "caf\udce9"], 32)
    assert str(error.value) == (
        f"expression 2 'caf\\udce9' is not UTF-8 text (character 4 is '\\udce9', {UTF8}"
    )


# --- backbone weights ------------------------------------------------------------------------


class Foo:
    """A class no state dict holds."""


def _text_file(path: Path) -> None:
    path.write_text("hello\n")


def _hdf5_file(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f["weights"] = np.zeros(3)


def _unsafe_pickle(path: Path) -> None:
    torch.save({"conv1.weight": Foo()}, path)


UNREADABLE = "incomplete (a copy or download cut short?) or not a torch file"


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (_text_file, UNREADABLE),
        (_hdf5_file, UNREADABLE),
        (
            _unsafe_pickle,
            f"refused unread: it would build the Python object {Foo.__module__}.Foo, which no "
            "rsis file or state_dict holds; do not load it unrestricted",
        ),
    ],
)
def test_unreadable_backbone_weights_are_one_line(tmp_path, capsys, write, reason):
    weights = tmp_path / "weights.jpg"
    write(weights)
    argv = ["features", "--cache", str(tmp_path / "never-read.h5"), "--backbone", "resnet18"]
    assert _error(capsys, [*argv, "--weights", str(weights), "--out", str(tmp_path / "f.h5")]) == [
        f"rsis features: error: backbone weights {weights}: {reason}; give {WEIGHTS_FILE}"
    ]
    assert not (tmp_path / "f.h5").exists()


def test_probe_refuses_unreadable_weights_before_rendering_a_scene(tmp_path, capsys, monkeypatch):
    def never(**_: Any) -> None:
        raise AssertionError("scenes rendered before the weights were checked")

    monkeypatch.setattr("rsis.probe.render_scenes", never)
    weights = tmp_path / "weights.jpg"
    _text_file(weights)
    argv = ["probe", "--encoder", f"bad={weights}", "--out", str(tmp_path / "probe.json")]
    assert _error(capsys, argv) == [
        f"rsis probe: error: backbone weights {weights}: {UNREADABLE}; give {WEIGHTS_FILE}"
    ]
    assert not (tmp_path / "probe.json").exists()


def test_backbone_weights_that_hold_no_dict_are_refused(tmp_path):
    weights = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], weights)
    with pytest.raises(UserError) as error:
        build_backbone("resnet18", str(weights))
    assert str(error.value) == (
        f"backbone weights {weights} hold a list, not a state_dict: give {WEIGHTS_FILE}"
    )


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def test_weights_of_another_depth_name_the_depth_they_fit(tmp_path, capsys, resnet18_state):
    weights = tmp_path / "resnet18.pt"
    torch.save(resnet18_state, weights)
    argv = ["features", "--cache", str(tmp_path / "never-read.h5"), "--backbone", "resnet50"]
    assert _error(capsys, [*argv, "--weights", str(weights), "--out", str(tmp_path / "f.h5")]) == [
        f"rsis features: error: backbone weights {weights} do not fit resnet50: they are "
        "resnet18 weights; give a torchvision resnet50 state_dict, or --backbone resnet18"
    ]
    # the same file builds the depth it fits, weights and all
    encoder = build_backbone("resnet18", str(weights))
    assert torch.equal(encoder.layer4[1].conv2.weight, resnet18_state["layer4.1.conv2.weight"])


def test_weights_that_fit_no_depth_are_counted_in_one_line(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    del state["layer4.1.bn2.bias"], state["layer1.0.bn1.bias"]
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    state["extra.weight"] = torch.zeros(1)
    weights = tmp_path / "damaged.pt"
    torch.save(state, weights)
    with pytest.raises(UserError) as error:
        build_backbone("resnet18", str(weights))
    assert str(error.value) == (
        f"backbone weights {weights} do not fit resnet18: keys missing: 2 (first "
        "layer1.0.bn1.bias), unexpected keys: 1 (first extra.weight), keys of another shape: 1 "
        "(first layer1.0.conv1.weight, [64, 64, 1, 1] in the file, [64, 64, 3, 3] expected); "
        "give a torchvision resnet18 state_dict"
    )


# --- altered bundle fields -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    """A bundle as ``rsis export`` writes it: a random ResNet-18 network with a PCA text
    pipeline on minilm (8 of its dimensions), 48x80 input."""
    torch.manual_seed(0)
    model = RRIS(backbone="resnet18", weights="none", hidden=16, text_dim=8, text_transform="pca")
    source = resolve_model("minilm")
    size = AutoConfig.from_pretrained(source.path).hidden_size
    text = {"model": "minilm", "model_hash": weights_hash(source), "embedding": "mean"}
    return {
        "kind": BUNDLE_KIND,
        "model": model.state_dict(),
        "model_config": model.config.to_dict(),
        "text": text | {"transform": "pca", "dim": 8, "pca_hash": ""},
        "pca": {"components": torch.randn(8, size), "mean": torch.zeros(size)},
        "input": input_spec({"height": 48, "width": 80}),
        "run": {},
        "max_referents": 3,
        "source": {},
    }


def _altered(bundle: dict[str, Any], path: Path, alter: Callable[[dict], object]) -> Path:
    """Save a copy of ``bundle`` with ``alter`` applied to it at ``path``."""
    copied = copy.deepcopy(bundle)
    alter(copied)
    save_checkpoint(path, copied)
    return path


def _predict(capsys, model: Path, photo: Path, out: Path) -> list[str]:
    argv = ["predict", "--model", str(model), "--image", str(photo), "--expr", "a red circle"]
    return _error(capsys, [*argv, "--device", "cpu", "--out", str(out)])


def test_an_unaltered_bundle_predicts(tmp_path, photo, bundle):
    """The bundle the other tests alter is sound: the refusals below are due to their change."""
    path = _altered(bundle, tmp_path / "bundle.pt", lambda b: None)
    argv = ["predict", "--model", str(path), "--image", str(photo), "--expr", "a red circle"]
    assert main([*argv, "--expr", "sky", "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out/photo_mask02.png") as mask:
        assert mask.size == (90, 60)


def _set(section: str, **values: object) -> Callable[[dict], None]:
    return lambda b: b[section].update(values)


@pytest.mark.parametrize(
    ("alter", "field", "problem"),
    [
        (
            lambda b: b.pop("model"),
            "model",
            "is missing, where a bundle holds the network's state_dict (names to tensors)",
        ),
        (
            lambda b: b["model_config"].pop("backbone"),
            "model_config.backbone",
            "is missing, where a bundle holds the network's setting",
        ),
        (
            _set("input", image_size=[0, -1]),
            "input.image_size",
            "is [0, -1], where a bundle holds [height, width] in pixels (two positive integers)",
        ),
        (
            _set("input", std=[0, 0, 0]),
            "input.std",
            "is [0, 0, 0], where a bundle holds the std the network divides by, "
            "[0.229, 0.224, 0.225]",
        ),
        (
            lambda b: b.update(max_referents=0),
            "max_referents",
            "is 0, where a bundle holds the longest referent sequence (a positive integer)",
        ),
        (
            _set("pca", components=torch.zeros(4, 384)),
            "pca.components",
            "is a tensor of shape [4, 384], where a bundle holds a (8, D) float tensor "
            "(model_config.text_dim by the text model's size)",
        ),
        (
            _set("pca", mean=torch.zeros(5)),
            "pca.mean",
            "is a tensor of shape [5], where a bundle holds a (384,) float tensor (one value per "
            "column of pca.components)",
        ),
        (
            _set("text", embedding="max"),
            "text.embedding",
            "is 'max', where a bundle holds one of pooled, mean",
        ),
    ],
)
def test_an_altered_bundle_field_is_named_in_one_line(
    tmp_path, capsys, photo, bundle, alter, field, problem
):
    path = _altered(bundle, tmp_path / "bundle.pt", alter)
    assert _predict(capsys, path, photo, tmp_path / "out") == [
        f"rsis predict: error: --model {path}: field {field} {problem}; {REEXPORT}"
    ]
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize(
    ("hidden", "problem"),
    [
        (
            32,  # a multiple of 16, but not the size of the weights
            "field model (the weights) does not fit the network of its model_config (keys of "
            "another shape: 41 (first decoder.skips.0.0.weight, [16, 512, 3, 3] in the file, "
            "[32, 512, 3, 3] expected)): a bundle of another rsis version, or altered",
        ),
        (33, "field model_config: model hidden size must be a positive multiple of 16, not 33"),
    ],
)
def test_a_model_config_that_the_weights_do_not_fit_names_the_bundle(
    tmp_path, bundle, hidden, problem
):
    path = _altered(bundle, tmp_path / "bundle.pt", _set("model_config", hidden=hidden))
    with pytest.raises(UserError) as error:
        load_bundle(path, "--model")
    assert str(error.value) == f"--model {path}: {problem}; {REEXPORT}"


def test_a_pca_for_another_text_model_size_is_refused(tmp_path, capsys, photo, bundle):
    """Shapes that agree with each other, but not with minilm's 384-dimensional embeddings."""
    alter = _set("pca", components=torch.zeros(8, 100), mean=torch.zeros(100))
    path = _altered(bundle, tmp_path / "bundle.pt", alter)
    assert _predict(capsys, path, photo, tmp_path / "out") == [
        f"rsis predict: error: --model {path}: field pca.mean is a tensor of shape [100], where "
        "a bundle holds a (384,) tensor, one value per dimension of the text model's "
        f"embeddings; {REEXPORT}"
    ]
