"""The HDF5 image/mask cache and the SequenceDataset that reads it, on the real sample."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

from rsis.cli import main
from rsis.data.cache import SequenceDataset, collate_sequences, write_cache
from rsis.data.cache_file import SplitCache
from rsis.errors import UserError
from tests.helpers import SAMPLE_ROOT

HEIGHT, WIDTH = 60, 107


class HashEmbeddings:
    """Deterministic fake text table: row = [sent_id, sent_id * 2]."""

    def lookup(self, sent_ids: np.ndarray) -> np.ndarray:
        return np.stack([sent_ids, sent_ids * 2], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def val_cache(sample_refer, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "val.h5"
    counts = write_cache(sample_refer, "val", path, HEIGHT, WIDTH)
    assert counts == {"images": 4, "referents": 13, "skipped_empty": 0, "skipped_degenerate": 0}
    return path


def test_mask_rows_and_picks_read_like_the_whole_split_and_survive_pickling(val_cache):
    """Masks are read chunk by chunk through a kept handle; a pickled cache (what a
    DataLoader worker receives) drops the handle and opens its own."""
    import pickle

    cache = SplitCache(val_cache)
    every = cache.masks(slice(None))
    np.testing.assert_array_equal(cache.masks(slice(3, 9)), every[3:9])
    np.testing.assert_array_equal(cache.masks(slice(3, 9), np.array([4, 0])), every[[7, 3]])
    copy = pickle.loads(pickle.dumps(cache))  # after a read: the open handle is not pickled
    np.testing.assert_array_equal(copy.masks(slice(10, 13)), every[10:])
    np.testing.assert_array_equal(copy.image(2), cache.image(2))
    cache.close()
    np.testing.assert_array_equal(cache.masks(slice(0, 2)), every[:2])  # reopens


def test_cache_round_trips_direct_decoding(sample_refer, val_cache):
    from rsis.data.cache import load_resized_image, resize_mask

    with h5py.File(val_cache) as f:
        assert f["images"].shape == (4, HEIGHT, WIDTH, 3)
        masks = SplitCache(val_cache).masks(slice(None))
        assert masks.shape == (13, HEIGHT, WIDTH)
        image_ids = f["image_id"][:]
        for row, ann_id in enumerate(f["ann_id"][:]):
            ann = sample_refer.annotations[int(ann_id)]
            mask = sample_refer.decode_mask(int(ann_id))
            np.testing.assert_array_equal(masks[row], resize_mask(mask, HEIGHT, WIDTH))
            assert f["area"][row] == mask.sum()
            assert image_ids[f["image_index"][row]] == ann["image_id"]
        for row, image_id in enumerate(image_ids):
            direct = load_resized_image(sample_refer.image_path(int(image_id)), HEIGHT, WIDTH)
            np.testing.assert_array_equal(f["images"][row], direct)
        ref_ids = [r["ref_id"] for r in sample_refer.refs_in_split("val")]
        assert sorted(f["ref_id"][:].tolist()) == sorted(ref_ids)
        ptr, sent_ids = f["sent_ptr"][:], f["sent_ids"][:]
        ref = next(r for r in sample_refer.refs if r["ref_id"] == 5342)
        row = f["ref_id"][:].tolist().index(5342)
        assert sent_ids[ptr[row] : ptr[row + 1]].tolist() == ref["sent_ids"]


def test_no_temporary_files_left(val_cache):
    assert [p.name for p in val_cache.parent.iterdir()] == ["val.h5"]


def test_dataset_order_policies(val_cache):
    with h5py.File(val_cache) as f:
        area, ref_id = f["area"][:], f["ref_id"][:]
    by_area = SequenceDataset(val_cache, HashEmbeddings(), order="area")
    for item in by_area:
        areas = [area[ref_id.tolist().index(r)] for r in item["ref_id"].tolist()]
        assert areas == sorted(areas, reverse=True)
    dataset = SequenceDataset(val_cache, HashEmbeddings(), order="dataset")
    assert torch.cat([item["ref_id"] for item in dataset]).tolist() == ref_id.tolist()
    shuffled = SequenceDataset(val_cache, HashEmbeddings(), order="random", seed=3)
    orders = set()
    for epoch in range(8):
        shuffled.set_epoch(epoch)
        orders.add(tuple(torch.cat([item["ref_id"] for item in shuffled]).tolist()))
    assert len(orders) > 1
    assert all(sorted(o) == sorted(ref_id.tolist()) for o in orders)


def test_expression_policies(val_cache):
    with h5py.File(val_cache) as f:
        ptr, sent_ids = f["sent_ptr"][:], f["sent_ids"][:]
    firsts = set(sent_ids[ptr[:-1]].tolist())
    first = SequenceDataset(val_cache, HashEmbeddings(), expression="first")
    assert {s for item in first for s in item["sent_id"].tolist()} == firsts
    rand = SequenceDataset(val_cache, HashEmbeddings(), expression="random", seed=1)
    seen = set()
    for epoch in range(10):
        rand.set_epoch(epoch)
        seen |= {s for item in rand for s in item["sent_id"].tolist()}
    assert seen - firsts, "random expressions never left the first sentence"
    item = rand[0]
    np.testing.assert_array_equal(item["text"][:, 0].numpy(), item["sent_id"].numpy())


def test_max_referents_and_collate(val_cache):
    dataset = SequenceDataset(val_cache, HashEmbeddings(), max_referents=2)
    lengths = [len(item["sent_id"]) for item in dataset]
    assert max(lengths) == 2 and sum(lengths) == 13
    batch = collate_sequences([dataset[0]])
    assert batch["image"].shape == (1, 3, HEIGHT, WIDTH)
    batch = collate_sequences([dataset[i] for i in range(len(dataset))])
    assert batch["masks"].shape == (len(dataset), 2, HEIGHT, WIDTH)
    assert batch["valid"].sum().item() == 13
    assert (batch["ref_id"][~batch["valid"]] == -1).all()
    assert batch["masks"][~batch["valid"]].sum() == 0


def test_bad_policy_names_the_value(val_cache):
    with pytest.raises(UserError, match="'biggest'"):
        SequenceDataset(val_cache, HashEmbeddings(), order="biggest")


def test_undecodable_image_is_a_clear_error(sample_refer, tmp_path):
    import shutil

    from rsis.data.refer import load_refer

    images = tmp_path / "images"
    shutil.copytree(sample_refer.image_dir, images)
    broken = sample_refer.image_path(sample_refer.refs_in_split("testA")[0]["image_id"]).name
    (images / broken).write_bytes(b"not a jpeg")
    refer = load_refer(sample_refer.root, "refcoco", "unc", images)
    out = tmp_path / "testA.h5"
    with pytest.raises(UserError, match=f"cannot decode image .*{broken}"):
        write_cache(refer, "testA", out, HEIGHT, WIDTH)
    assert list(tmp_path.glob("*.h5*")) == [] and not list(tmp_path.glob(".testA*"))


def test_bench_loader_prints_both_paths_and_their_ratio(capsys):
    """``rsis bench loader`` on the real sample: both paths timed, the ratio printed."""
    images = SAMPLE_ROOT / "images/mscoco/images/train2014"
    assert main(
        ["bench", "loader", "--refs-root", str(SAMPLE_ROOT), "--dataset", "refcoco",
         "--split", "testB", "--height", "48", "--width", "80", "--workers", "0",
         "--min-sequences", "8", "--images-cached", "32", "--images-direct", "16",
         "--images", str(images)]
    ) == 0  # fmt: skip
    out = capsys.readouterr().out
    cached = float(re.search(r"cached \(HDF5\) :\s+([\d.]+) images/s \(0 workers\)", out)[1])
    direct = float(re.search(r"direct \(JPEG \+ polygons\):\s+([\d.]+) images/s", out)[1])
    ratio = float(re.search(r"ratio cached/direct: ([\d.]+)x", out)[1])
    assert cached > 0 and direct > 0
    assert ratio == pytest.approx(cached / direct, rel=0.05)
