"""Compare two results/ folders of the same configuration (.ci/slurm: a local run and a
cluster run, with the same thread counts). Exits 1 naming every difference.

What must match, and how:
- every file is in both folders;
- byte for byte: metrics (eval/*.json), per-referent scores (eval/*.csv), tables and figures:
  they are functions of the model weights and the data, with no time or path in them;
- HDF5 (caches, text, predictions): every dataset and attribute equal (the file bytes hold
  HDF5 bookkeeping that may differ between two writes of the same content);
- checkpoints and bundles: every tensor of the model equal (the payload also holds the
  training history, whose speed columns are timings);
- train/*/metrics.csv: every column but the timings (images_per_s, referents_per_s,
  data_wait_share) equal;
- tensorboard event files: skipped (wall times, and named by time and PID); so is the run
  folder's `.lock` (the PID of the trainer that held it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

TIMING_COLUMNS = ["images_per_s", "referents_per_s", "data_wait_share"]


def same_hdf5(a: Path, b: Path) -> bool:
    with h5py.File(a) as fa, h5py.File(b) as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        if names_a != names_b or not _same_attrs(fa.attrs, fb.attrs):
            return False
        for name in names_a:
            if not _same_attrs(fa[name].attrs, fb[name].attrs):
                return False
            if isinstance(fa[name], h5py.Dataset) and not _equal(fa[name][()], fb[name][()]):
                return False
    return True


def _same_attrs(a: h5py.AttributeManager, b: h5py.AttributeManager) -> bool:
    return sorted(a) == sorted(b) and all(_equal(a[k], b[k]) for k in a)


def _equal(a, b) -> bool:
    """Exact equality of HDF5 values, variable-length (object) arrays element by element."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == object or b.dtype == object:
        return a.shape == b.shape and all(_equal(x, y) for x, y in zip(a.flat, b.flat, strict=True))
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a training checkpoint (its ``model``) or of a plain state dict (the
    pretrained demo encoder's weights)."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    return loaded.get("model", loaded)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = _state_dict(a), _state_dict(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def same_training_curve(a: Path, b: Path) -> bool:
    da, db = (pd.read_csv(p).drop(columns=TIMING_COLUMNS) for p in (a, b))
    return da.equals(db)


def _files(root: Path) -> set[Path]:
    """Files under ``root``, less tensorboard event files (wall times, named by time and PID)
    and the trainer's run-folder lock (``.lock``: the PID that held it)."""
    files = {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    return {p for p in files if "tensorboard" not in p.parts and p.name != ".lock"}


def compare(a_root: Path, b_root: Path) -> list[str]:
    """Differences between the two folders (empty: they agree); prints what was compared."""
    files_a, files_b = _files(a_root), _files(b_root)
    problems = [f"only in {a_root}: {p}" for p in sorted(files_a - files_b)]
    problems += [f"only in {b_root}: {p}" for p in sorted(files_b - files_a)]
    counts: dict[str, int] = {}
    for rel in sorted(files_a & files_b):
        a, b = a_root / rel, b_root / rel
        if rel.suffix == ".h5":
            how, same = "HDF5 content", same_hdf5(a, b)
        elif rel.suffix == ".pt":
            how, same = "model tensors", same_weights(a, b)
        elif rel.name == "metrics.csv" and "train" in rel.parts:
            how, same = "training curve without timings", same_training_curve(a, b)
        else:
            how, same = "bytes", a.read_bytes() == b.read_bytes()
        counts[how] = counts.get(how, 0) + 1
        if not same:
            problems.append(f"differs ({how}): {rel}")
    for how, count in counts.items():
        print(f"  {count:3d} files compared: {how}")
    return problems


def main() -> int:
    a_root, b_root = (Path(arg) for arg in sys.argv[1:3])
    problems = compare(a_root, b_root)
    for problem in problems:
        print(f"compare_runs: {problem}", file=sys.stderr)
    if not problems:
        print(f"compare_runs: {b_root} equals {a_root}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
