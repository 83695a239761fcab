"""Bad output paths and options of ``rsis evaluate``, ``rsis train`` and ``rsis download``: one
line, before the work, and nothing half-written or empty left behind."""

from __future__ import annotations

import errno
import hashlib
import zipfile
from pathlib import Path

import pytest

import rsis.evaluate
import rsis.train
from rsis.cli import main
from rsis.train import Trainer
from tests.helpers import make_train_config
from tests.test_train_safety import _train_args as train_safety_args


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a failed command printed (after any log lines)."""
    return capsys.readouterr().err.strip().splitlines()[-1]


def _files(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, relative to it, sorted."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


# --- rsis evaluate --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(demo_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained for one step (its numbers do not matter here)."""
    out = tmp_path_factory.mktemp("bad_outputs_run")
    Trainer(make_train_config(demo_pipeline, out, epochs=1, steps_per_epoch=1)).run()
    return out / "best.pt"


def _evaluate_args(root: Path, checkpoint: Path, out_dir: Path) -> list[str]:
    return ["evaluate", "--checkpoint", str(checkpoint), "--cache", str(root / "cache/val.h5"),
            "--text", str(root / "text/mean~pca~8.h5"), "--device", "cpu",
            "--out-dir", str(out_dir)]  # fmt: skip


def test_evaluate_refuses_a_file_as_out_dir_before_reading_the_checkpoint(
    demo_pipeline, tmp_path, capsys
):
    """The checkpoint does not even exist: the output folder is checked before anything."""
    out = tmp_path / "x.jpg"
    out.write_bytes(b"jpeg")
    args = _evaluate_args(demo_pipeline, tmp_path / "missing.pt", out)
    assert main(args) == 2
    assert _error(capsys) == (
        f"rsis evaluate: error: --out-dir {out}: {out} is a file, not a folder; give another path"
    )
    assert _files(tmp_path) == ["x.jpg"] and out.read_bytes() == b"jpeg"


def test_evaluate_refuses_a_folder_where_an_output_goes_before_evaluating(
    demo_pipeline, tmp_path, capsys
):
    blocker = tmp_path / "val~first.predictions.json"
    blocker.mkdir()
    assert main(_evaluate_args(demo_pipeline, tmp_path / "missing.pt", tmp_path)) == 2
    assert _error(capsys) == (
        f"rsis evaluate: error: {blocker} is a folder where rsis evaluate writes a file: "
        "remove it or give another --out-dir"
    )
    assert _files(tmp_path) == ["val~first.predictions.json"]


def test_evaluate_writes_all_outputs_or_none(
    demo_pipeline, checkpoint, tmp_path, capsys, monkeypatch
):
    """A folder that appears at the last output's name during the evaluation: the files already
    written go, and so does the output folder the command created."""
    out = tmp_path / "new" / "eval"
    last = out / "val~first.predictions.json"
    real_write = rsis.evaluate.write_predictions_json

    def folder_appears(path, samples):
        Path(path).mkdir()
        real_write(path, samples)

    monkeypatch.setattr(rsis.evaluate, "write_predictions_json", folder_appears)
    assert main(_evaluate_args(demo_pipeline, checkpoint, out)) == 2
    assert _error(capsys) == (
        f"rsis evaluate: error: {last} is a folder: give a file name for this output"
    )
    assert _files(tmp_path) == ["new", "new/eval", "new/eval/val~first.predictions.json"]
    last.rmdir()
    monkeypatch.setattr(rsis.evaluate, "write_predictions_json", real_write)
    assert main(_evaluate_args(demo_pipeline, checkpoint, out)) == 0
    suffixes = ("csv", "json", "predictions.h5", "predictions.json")
    assert _files(out) == [f"val~first.{suffix}" for suffix in suffixes]


# --- rsis train -----------------------------------------------------------------------------


def _train_args(root: Path, out_dir: Path) -> list[str]:
    """A one-epoch, one-step run of the tiny demo (``test_train_safety``'s, bounded)."""
    return [*train_safety_args(root, out_dir), "--steps-per-epoch", "1"]


def test_train_refuses_a_file_as_out_dir_before_any_work(demo_pipeline, tmp_path, capsys):
    """The caches do not even exist: the run folder is checked before they are read."""
    out = tmp_path / "x.jpg"
    out.write_bytes(b"jpeg")
    args = _train_args(tmp_path / "nowhere", out)
    assert main(args) == 2
    assert _error(capsys) == (
        f"rsis train: error: --out-dir {out}: {out} is a file, not a folder; give another path"
    )
    assert _files(tmp_path) == ["x.jpg"]


def test_train_refuses_a_negative_cpu_count(demo_pipeline, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main([*_train_args(demo_pipeline, out), "--cpus", "-2"])
    assert exit_.value.code == 2
    assert (
        _error(capsys) == "rsis train: error: argument --cpus: '-2' is not an integer of 0 or more"
    )
    assert not out.exists()


def test_a_failed_run_leaves_no_folder_it_created(demo_pipeline, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    missing = tmp_path / "missing.h5"
    args = _train_args(demo_pipeline, out)
    args[args.index("--train-cache") + 1] = str(missing)
    assert main(args) == 2
    assert _error(capsys) == (
        f"rsis train: error: split cache not found: {missing}; run `rsis prepare` first"
    )
    assert _files(tmp_path) == []
    # A folder that was there before is the user's: it stays.
    out.mkdir(parents=True)
    assert main(args) == 2
    assert out.is_dir()


def test_a_run_that_fails_after_an_epoch_keeps_its_resumable_folder(
    demo_pipeline, tmp_path, capsys, monkeypatch
):
    """The loss turns NaN in the second epoch: last.pt of the first resumes the run."""
    out = tmp_path / "run"
    real_epoch = Trainer._train_epoch

    def diverge_after_the_first(self, epoch):
        if epoch:
            monkeypatch.setattr(rsis.train, "soft_iou_loss", lambda *a: a[0].sum() * float("nan"))
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", diverge_after_the_first)
    args = [*_train_args(demo_pipeline, out), "--epochs", "2"]
    assert main(args) == 2
    assert _error(capsys).startswith("rsis train: error: loss is nan at epoch 1, step 0")
    assert {"last.pt", "best.pt", ".lock", "tensorboard"} <= set(_files(out))


# --- rsis download --------------------------------------------------------------------------

PAYLOAD = b"not a zip archive\n"


@pytest.fixture
def source(tmp_path: Path) -> str:
    """A file:// URL of a small file that is not a zip."""
    path = tmp_path / "source" / "data.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path.as_uri()


def _download(source: str, out: Path, *extra: str) -> list[str]:
    return ["download", "--url", source, "--out", str(out), *extra]


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf"])
def test_download_refuses_a_timeout_that_is_no_number_of_seconds(source, tmp_path, capsys, timeout):
    out = tmp_path / "out" / "data.bin"
    assert main(_download(source, out, "--timeout", timeout)) == 2
    assert _error(capsys) == (
        f"rsis download: error: --timeout {float(timeout)}: give a number of seconds above 0"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--url", "notaurl", "argument --url: 'notaurl' is not a URL: give an http://, "
         "https://, ftp:// or file:// address"),
        ("--mirror", "www.example.org/x.zip", "argument --mirror: 'www.example.org/x.zip' is not "
         "a URL: give an http://, https://, ftp:// or file:// address"),
        ("--sha256", "zzz", "argument --sha256: 'zzz' is not a SHA-256 digest: give its 64 "
         "hexadecimal digits"),
        ("--sha256", "0" * 63, f"argument --sha256: '{'0' * 63}' is not a SHA-256 digest: give "
         "its 64 hexadecimal digits"),
    ],
)  # fmt: skip
def test_download_refuses_a_bad_url_or_digest_before_downloading(
    source, tmp_path, capsys, flag, value, expected
):
    out = tmp_path / "out" / "data.bin"
    with pytest.raises(SystemExit) as exit_:
        main(_download(source, out, flag, value))
    assert exit_.value.code == 2
    assert _error(capsys) == f"rsis download: error: {expected}"
    assert not (tmp_path / "out").exists()


def test_download_checks_a_well_formed_digest(source, tmp_path):
    out = tmp_path / "out" / "data.bin"
    digest = hashlib.sha256(PAYLOAD).hexdigest().upper()
    assert main(_download(source, out, "--sha256", digest)) == 0
    assert out.read_bytes() == PAYLOAD and _files(out.parent) == ["data.bin"]


def test_download_of_no_zip_with_extract_to_leaves_nothing(source, tmp_path, capsys):
    out, folder = tmp_path / "out" / "data.zip", tmp_path / "extracted"
    assert main(_download(source, out, "--extract-to", str(folder))) == 2
    assert _error(capsys) == (
        f"rsis download: error: {out} is not a readable zip archive (File is not a zip file), "
        "so it cannot be extracted: check the URL, or drop --extract-to to keep the file as it "
        f"is; the download {out} was deleted"
    )
    assert _files(tmp_path) == ["source", "source/data.bin"]


def test_download_extracts_a_zip_into_a_new_folder(tmp_path):
    archive = tmp_path / "source.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("refcoco/refs.p", "refs")
    out, folder = tmp_path / "out" / "data.zip", tmp_path / "extracted"
    args = _download(archive.as_uri(), out, "--extract-to", str(folder), "--remove-archive")
    assert main(args) == 0
    assert (folder / "refcoco/refs.p").read_text() == "refs"
    assert _files(out.parent) == []


def test_download_refuses_a_folder_as_out(source, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(_download(source, out)) == 2
    assert _error(capsys) == (
        f"rsis download: error: --out {out} is a folder: give the path of the file to download"
    )
    assert _files(tmp_path) == ["out", "source", "source/data.bin"]


def test_a_failed_download_leaves_no_folder_it_created(tmp_path, capsys):
    missing = tmp_path / "missing.zip"
    out = tmp_path / "new" / "sub" / "data.zip"
    assert main(_download(missing.as_uri(), out)) == 2
    assert _error(capsys).startswith(
        f"rsis download: error: could not download data.zip ({missing.as_uri()}: "
    )
    assert _files(tmp_path) == []


def test_a_full_disk_while_extracting_keeps_the_verified_download(tmp_path, capsys, monkeypatch):
    archive = tmp_path / "source.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("refcoco/refs.p", "refs")

    def disk_full(self, member, path=None, pwd=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "extract", disk_full)
    out, folder = tmp_path / "out" / "data.zip", tmp_path / "extracted"
    assert main(_download(archive.as_uri(), out, "--extract-to", str(folder))) == 2
    assert _error(capsys) == (
        f"rsis download: error: disk full while extracting {out} into {folder}: free space "
        f"there and rerun; the verified download is kept at {out}"
    )
    assert out.read_bytes() == archive.read_bytes()  # 13 GB of COCO images not fetched again
    assert not folder.exists()
