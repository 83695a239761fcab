"""Atomic writes and HDF5 identity checks shared by every cache the pipeline writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import h5py


class IdentityMismatchError(RuntimeError):
    """An existing artifact was written by another model, tokenizer or configuration."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Nothing half-written is ever left under the final name: on an exception the temporary
    file is removed and the exception propagates.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        if tmp.exists():
            tmp.chmod(0o666 & ~umask)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def plain_attrs(attrs: h5py.AttributeManager) -> dict[str, object]:
    """HDF5 attributes as plain Python values (numpy scalars unwrapped)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()}


def read_attrs(path: str | os.PathLike) -> dict[str, object]:
    """Return the root attributes of an HDF5 file as plain Python values."""
    with h5py.File(path, "r") as f:
        return plain_attrs(f.attrs)


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


def check_identity(path: str | os.PathLike, expected: Mapping[str, object]) -> None:
    """Raise ``IdentityMismatchError`` if ``path``'s attributes differ from ``expected``.

    Args:
        path: an HDF5 file written by this package.
        expected: attribute names and the values the caller needs.
    """
    differences = describe_differences(
        read_attrs(path), expected, found_as="file has", expected_as="expected", keys=expected
    )
    if differences:
        raise IdentityMismatchError(
            f"{path} was written by a different pipeline ({'; '.join(differences)}). "
            "Delete it or rerun the step that writes it."
        )
