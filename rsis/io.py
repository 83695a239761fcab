"""Atomic writes, reading the files users name, and HDF5 identity checks shared by every cache
the pipeline writes."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py

from rsis.errors import UserError

log = logging.getLogger(__name__)


class IdentityMismatchError(RuntimeError):
    """An existing artifact was written by another model, tokenizer or configuration."""


def _temporary_pattern(final: Path) -> re.Pattern[str]:
    """Names ``tempfile.mkstemp`` gives the temporary files of ``final``: ``.NAME.XXXXXXXX.tmp``."""
    return re.compile(rf"\.{re.escape(final.name)}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temporaries(final: Path) -> None:
    """Delete the temporary files a killed writer of ``final`` left behind.

    Only one writer of a file runs at a time (Snakemake locks its outputs; the trainer writes
    from rank 0 only), so a temporary of ``final`` that exists when a new write starts belongs
    to a writer that died before it could clean up.
    """
    pattern = _temporary_pattern(final)
    for leftover in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        if pattern.fullmatch(leftover.name):
            log.info("removing %s, left by an interrupted write of %s", leftover, final)
            leftover.unlink(missing_ok=True)


def is_disk_full(error: BaseException, folder: Path) -> bool:
    """True when ``error`` comes from a full disk.

    h5py reports errno 28; torch.save only says "unexpected pos", so a write that failed
    while ``folder``'s filesystem has under 1 MiB free counts as disk full too.
    """
    if shutil.disk_usage(folder).free < 2**20:
        return True
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def require_free_space(path: Path, needed: int) -> None:
    """Refuse to start writing ``path`` when its filesystem has less than ``needed`` bytes free.

    HDF5 can crash the process (segmentation fault) when the disk fills in the middle of a
    write, so writers that know their size check first.
    """
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write {path}: {_unwritable(folder, error)}") from error
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UserError(
            f"disk full: {path} needs about {needed / 2**20:.1f} MiB but {folder} has "
            f"{free / 2**20:.1f} MiB free; free space (or point the output elsewhere) and rerun"
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Nothing half-written is ever left under the final name: on an exception the temporary
    file is removed and the exception propagates; a full disk becomes a ``UserError`` saying
    so. Temporaries of ``path`` left by a killed writer are removed first.
    """
    final = Path(path)
    if final.is_dir():
        raise UserError(f"{final} is a folder: give a file name for this output")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as error:
        raise UserError(f"cannot write {final}: {_unwritable(final.parent, error)}") from error
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        if tmp.exists():
            tmp.chmod(0o666 & ~umask)
        os.replace(tmp, final)
    except Exception as error:
        if is_disk_full(error, final.parent):
            raise UserError(
                f"disk full while writing {final}: free space on {final.parent} "
                "(or point the output elsewhere) and rerun; nothing was left at that name"
            ) from error
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_texts(texts: Mapping[Path, str]) -> None:
    """Write several text files all or nothing: every one goes to a temporary beside its path
    first (so a folder in the way of any of them refuses them all), and they are renamed into
    place only once every one is written."""
    with contextlib.ExitStack() as stack:
        temporaries = {path: stack.enter_context(atomic_path(path)) for path in texts}
        for path, tmp in temporaries.items():
            tmp.write_text(texts[path])


def missing_folders(folder: str | os.PathLike) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: the folders
    that writing in ``folder`` creates (``undo_on_failure`` removes them)."""
    folder = Path(folder).absolute()
    return list(itertools.takewhile(lambda p: not p.exists(), (folder, *folder.parents)))


def _remove(path: Path) -> None:
    """Delete the file or folder tree at ``path``, if any."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def undo_on_failure(created: list[Path], leftovers: Collection[str] = ()) -> Iterator[list[Path]]:
    """Yield a list for the block to name each file (or folder tree) it writes; should the
    block fail, delete them, then each folder of ``created`` (``missing_folders``, deepest
    first) that holds nothing, or nothing but the ``leftovers`` (names deleted with it).

    A folder holding anything else (a resumable checkpoint, a partial download) is kept.
    """
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in reversed(written):
            _remove(path)
        for folder in created:
            with contextlib.suppress(OSError):
                names = os.listdir(folder)
                if set(names) <= set(leftovers):
                    for name in names:
                        _remove(folder / name)
                    folder.rmdir()
        raise


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def require_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """Check, creating nothing, that files can be written in ``folder`` (or, where it does not
    exist yet, in the nearest folder above it), so that a long job refuses a bad output path
    before it starts, not at its end.

    Args:
        what: how the user named it, e.g. ``--out photos/``.
    """
    folder = Path(folder).absolute()
    try:
        with tempfile.TemporaryFile(dir=_nearest_existing(folder)):
            pass
    except OSError as error:
        raise UserError(f"{what}: {_unwritable(folder, error)}") from error


def _nearest_existing(path: Path) -> Path:
    """``path`` or, where it does not exist, the nearest of its parents that does."""
    return next((p for p in (path, *path.parents) if p.exists()), path)


def _unwritable(folder: Path, error: OSError) -> str:
    """Why nothing can be written in ``folder``, and what to do."""
    blocker = _nearest_existing(folder)
    if not blocker.is_dir():
        return f"{blocker} is a file, not a folder; give another path"
    return f"{folder} is not writable ({error.strerror}); give an output path in a writable folder"


def read_user_text(path: str | os.PathLike, what: str, kind: str) -> str:
    """The text of a file the user named; a missing, folder or non-UTF-8 path is a
    ``UserError`` naming it.

    Args:
        what: what the file should be, for the message (e.g. ``a results part``).
        kind: its format, for the message (e.g. ``a Markdown file``).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder: give {what} ({kind})")
    if not path.is_file():
        raise UserError(f"{path}: no such file; give {what} ({kind})")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 text (byte {error.start}: {error.reason}): give {what} ({kind})"
        ) from error


def read_user_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed JSON of a file the user named; an unreadable or invalid file is a
    ``UserError`` naming it and saying where the JSON breaks."""
    text = read_user_text(path, what, "a JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}): "
            f"give {what}"
        ) from error


def plain_attrs(attrs: h5py.AttributeManager) -> dict[str, object]:
    """HDF5 attributes as plain Python values (numpy scalars unwrapped)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()}


def open_hdf5(path: str | os.PathLike, *, writer: str) -> h5py.File:
    """Open an HDF5 file for reading; a missing or unreadable file names the step that writes it.

    Args:
        writer: the command that writes such files, e.g. ``rsis prepare``.
    """
    if not Path(path).is_file():
        raise UserError(f"{path} not found: run `{writer}` (or snakemake) to write it")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise UserError(
            f"{path} is not a readable HDF5 file ({error}); "
            f"rerun `{writer}` (or snakemake) to write it again"
        ) from error


def require_members(
    f: h5py.File, datasets: Iterable[str], attrs: Iterable[str], *, kind: str, writer: str
) -> None:
    """Refuse an HDF5 file that lacks any of the datasets or root attributes that ``writer``
    always writes (another step's output given by mistake), naming what it lacks.

    Args:
        kind: what the file should be, e.g. ``a tokens file``.
    """
    missing = [name for name in datasets if name not in f]
    missing += [f"attribute {name}" for name in attrs if name not in f.attrs]
    if missing:
        raise UserError(
            f"{f.filename} is not {kind} from `{writer}` (it lacks {', '.join(missing)}): "
            f"give the file that `{writer}` writes"
        )


def describe_differences(
    found: Mapping[str, object],
    expected: Mapping[str, object],
    *,
    found_as: str = "checkpoint has",
    expected_as: str = "this run has",
    keys: Iterable[str] | None = None,
) -> list[str]:
    """``"key: <found_as> X, <expected_as> Y"`` for every key whose value differs.

    Args:
        keys: the keys to compare, in order (default: every key of either, sorted).
    """
    keys = sorted(set(found) | set(expected)) if keys is None else keys
    return [
        f"{key}: {found_as} {found.get(key)!r}, {expected_as} {expected.get(key)!r}"
        for key in keys
        if found.get(key) != expected.get(key)
    ]


def check_identity(
    path: str | os.PathLike,
    attrs: Mapping[str, object],
    expected: Mapping[str, object],
    *,
    writer: str,
) -> None:
    """Raise ``IdentityMismatchError`` if ``path``'s attributes differ from ``expected``.

    Args:
        path: an HDF5 file written by this package (named in the message).
        attrs: its root attributes, as its reader read them (``plain_attrs``).
        expected: attribute names and the values the caller needs.
        writer: the command that writes such files, e.g. ``rsis embed``.
    """
    differences = describe_differences(
        attrs, expected, found_as="file has", expected_as="expected", keys=expected
    )
    if differences:
        raise IdentityMismatchError(
            f"{path} was written by a different pipeline ({'; '.join(differences)}). "
            f"Delete it or rerun `{writer}`."
        )
