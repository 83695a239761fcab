"""Atomic writes: leftovers of a killed writer are removed, a full disk is named (issue 12)."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path
from types import SimpleNamespace

import h5py
import pytest
import torch

from rsis.cli import main
from rsis.errors import UserError
from rsis.io import atomic_path, read_user_json, require_writable_folder
from tests.conftest import SAMPLE_ROOT

IMAGES = SAMPLE_ROOT / "images/mscoco/images/train2014"


def _prepare_args(out: Path) -> list[str]:
    return ["prepare", "--refs-root", str(SAMPLE_ROOT), "--dataset", "refcoco", "--split",
            "testA", "--images", str(IMAGES), "--height", "32", "--width", "48",
            "--out", str(out)]  # fmt: skip


def test_next_write_removes_a_killed_writers_temporaries(tmp_path):
    out = tmp_path / "testA.h5"
    leftovers = [tmp_path / ".testA.h5.k3x_9qzp.tmp", tmp_path / ".testA.h5.00000000.tmp"]
    others = [
        tmp_path / ".testA.h5.x.abcdefgh.tmp",  # a temporary of another file, testA.h5.x
        tmp_path / ".testA.h5.tmp",  # not a name mkstemp gives
        tmp_path / "notes.txt",
    ]
    for path in leftovers + others:
        path.write_bytes(b"half-written")
    assert main(_prepare_args(out)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name] + [p.name for p in others]
    )


def test_killed_writer_leaves_a_temporary_that_the_rerun_removes(tmp_path):
    """A real kill: the writer dies inside atomic_path, so its temporary stays; the next write
    of the same file removes it."""
    out = tmp_path / "x.bin"
    script = (
        "import os, signal\nfrom rsis.io import atomic_path\n"
        f"with atomic_path({str(out)!r}) as tmp:\n"
        "    tmp.write_bytes(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run(["python", "-c", script]).returncode == -9
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".x.bin.") and not out.exists()
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"complete")
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    assert out.read_bytes() == b"complete"


def test_disk_full_during_prepare_is_named(tmp_path, monkeypatch, capsys):
    def full(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full)
    out = tmp_path / "testA.h5"
    assert main(_prepare_args(out)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"rsis prepare: error: disk full while writing {out}")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_in_torch_save_is_named(tmp_path, monkeypatch):
    """torch.save only says "unexpected pos"; the filesystem's free space tells it apart."""
    from rsis.checkpoint import save_checkpoint

    def full(obj, path):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr("rsis.io.shutil.disk_usage", lambda path: SimpleNamespace(free=0))
    with pytest.raises(UserError, match=f"disk full while writing {tmp_path / 'last.pt'}"):
        save_checkpoint(tmp_path / "last.pt", {"epoch": 0})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr("rsis.io.shutil.disk_usage", lambda path: SimpleNamespace(free=10**9))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # not full: the error as it is
        save_checkpoint(tmp_path / "last.pt", {"epoch": 0})


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 200 KB tmpfs (needs root, as in CI's container); skipped where mounting is refused."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root); the mocked tests cover disk full")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_prepare_on_a_really_full_disk(tiny_filesystem, capsys):
    """Checked before writing: HDF5 can crash the process when the disk fills mid-write."""
    out = tiny_filesystem / "val.h5"
    args = _prepare_args(out)
    args[args.index("--height") + 1 : args.index("--width") + 2] = ["240", "--width", "427"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"disk full: {out} needs about 1.4 MiB but {tiny_filesystem} has 0.2 MiB free" in error
    assert list(tiny_filesystem.iterdir()) == []


def test_an_output_path_that_cannot_be_written_is_named(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    deeper = a_file / "deeper" / "out.md"
    with pytest.raises(UserError, match=r"notes\.txt is a file, not a folder"), atomic_path(deeper):
        pass
    with pytest.raises(UserError, match="is a folder: give a file name"), atomic_path(tmp_path):
        pass
    with pytest.raises(UserError, match=r"--out x: .*notes\.txt is a file, not a folder"):
        require_writable_folder(a_file / "masks", "--out x")
    before = sorted(tmp_path.iterdir())
    require_writable_folder(tmp_path / "new" / "folder", "--out y")
    assert sorted(tmp_path.iterdir()) == before  # nothing created, the probe file gone


def test_a_folder_given_for_an_input_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "convergence.md"
    assert main(["convergence", "--records", str(tmp_path), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"rsis convergence: error: {tmp_path} is a folder: give --records the convergence.json "
        "that rsis train writes (a JSON file)"
    )
    assert not out.exists()


def test_a_user_json_file_that_cannot_be_read_is_one_line(tmp_path):
    what = "a metrics file"
    with pytest.raises(UserError, match=rf"^{tmp_path}/gone\.json: no such file; give {what}"):
        read_user_json(tmp_path / "gone.json", what)
    with pytest.raises(UserError, match=rf"^{tmp_path} is a folder: give {what} \(a JSON file\)$"):
        read_user_json(tmp_path, what)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(UserError, match=r"latin\.json is not UTF-8 text \(byte 13: "):
        read_user_json(latin, what)
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": 1,\n "b": }')
    with pytest.raises(
        UserError, match=r"broken\.json is not valid JSON \(line 2, column 7: Expecting value\)"
    ):
        read_user_json(broken, what)
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}')
    assert read_user_json(good, what) == {"a": [1, 2]}


def test_an_output_file_given_as_a_folder_is_refused_before_anything_runs(tmp_path, capsys):
    parts = tmp_path / "part.md"
    parts.write_text("# results\n")
    out = f"{tmp_path}/summary/"
    with pytest.raises(SystemExit) as exit_info:
        main(["summary", "--parts", str(parts), "--out", out])
    assert exit_info.value.code == 2
    assert f"argument --out: '{out}' ends with '/', so it names a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.md"]


def test_a_missing_path_met_inside_a_command_is_one_line(tmp_path, monkeypatch, capsys):
    def fails(args):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "gone.md")

    monkeypatch.setattr("rsis.summary._summary_command", fails)
    parts = tmp_path / "part.md"
    parts.write_text("# results\n")
    assert main(["summary", "--parts", str(parts), "--out", str(tmp_path / "s.md")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "rsis summary: error: gone.md: No such file or directory; check this path"


def test_a_file_in_the_way_of_an_output_folder_is_named(tmp_path, capsys):
    blocker = tmp_path / "x.jpg"
    blocker.write_text("not a folder")
    assert main(_prepare_args(blocker / "t.h5")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"rsis prepare: error: cannot write {blocker}/t.h5: ")
    assert error.endswith(f"{blocker} is a file, not a folder; give another path")
    assert blocker.read_text() == "not a folder"
