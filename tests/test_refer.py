"""The refer-layout reader on the real RefCOCO sample, Python 2 pickles and bad input."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct

import numpy as np
import pytest

from rsis.data.refer import load_refer, load_refs_pickle
from rsis.errors import UserError
from tests.helpers import SAMPLE_ROOT


def test_sample_counts(sample_refer):
    assert len(sample_refer.refs) == 25
    assert len(sample_refer.sentences()) == 74
    assert len(sample_refer.images) == 9
    counts = {s: len(sample_refer.refs_in_split(s)) for s in sample_refer.splits()}
    assert counts == {"val": 13, "testA": 4, "testB": 8}


def test_masks_nonempty_and_image_sized(sample_refer):
    for ref in sample_refer.refs:
        mask = sample_refer.decode_mask(ref["ann_id"])
        image = sample_refer.images[ref["image_id"]]
        assert mask.shape == (image["height"], image["width"])
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert mask.sum() > 0


def test_known_ref_sentences(sample_refer):
    ref = next(r for r in sample_refer.refs if r["ref_id"] == 5342)
    assert ref["image_id"] == 520199 and ref["split"] == "val"
    assert [s["sent"] for s in ref["sentences"]] == ["woman in redclick the", "pink shirt"]
    assert ref["sentences"][0]["sent_id"] == 15214


def test_unknown_split_is_an_error(sample_refer):
    with pytest.raises(UserError, match="train"):
        sample_refer.refs_in_split("train")


def test_sequences_split_long_images(sample_refer):
    lengths = [len(seq) for seq in sample_refer.sequences("val", max_referents=2)]
    assert max(lengths) <= 2 and sum(lengths) == 13
    images = [seq[0]["image_id"] for seq in sample_refer.sequences("val", max_referents=6)]
    assert len(images) == len(set(images)) == 4


def _py2_pickle(value: object) -> bytes:
    """Serialise like Python 2's cPickle (protocol 2): str become SHORT_BINSTRING opcodes."""
    if isinstance(value, str):
        data = value.encode("utf-8")
        return b"U" + bytes([len(data)]) + data
    if isinstance(value, bool) or not isinstance(value, int | float | list | dict):
        raise TypeError(value)
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)
    if isinstance(value, list):
        return b"](" + b"".join(_py2_pickle(v) for v in value) + b"e"
    items = b"".join(_py2_pickle(k) + _py2_pickle(v) for k, v in value.items())
    return b"}(" + items + b"u"


def test_python2_pickle_loads(tmp_path):
    refs = [{"ref_id": 1, "split": "val", "sentences": [{"sent_id": 7, "sent": "caf\u00e9 man"}]}]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02" + _py2_pickle(refs) + b".")
    # Plain pickle.load gives bytes: exactly what the official file does.
    assert pickle.loads(path.read_bytes(), encoding="bytes")[0][b"split"] == b"val"
    assert load_refs_pickle(path) == refs


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_objects(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "x": _Evil()}]))
    with pytest.raises(UserError, match=r"refusing to load (posix|os)\.system"):
        load_refs_pickle(path)


def test_missing_root_names_flag_and_config_key(tmp_path):
    with pytest.raises(UserError, match=r"dataset root not found: .*nowhere.*--refs-root .*`root`"):
        load_refer(tmp_path / "nowhere", "refcoco", "unc")
    with pytest.raises(
        UserError, match=r"refs file not found: .*\(umd\)\.p.*--split-by .*`splitBy`"
    ):
        load_refer(SAMPLE_ROOT, "refcoco", "umd")


def _copy_sample(tmp_path):
    root = tmp_path / "sample"
    shutil.copytree(SAMPLE_ROOT / "refcoco", root / "refcoco")
    return root


def test_unknown_ann_id_and_empty_sentence_are_counted_skips(tmp_path):
    root = _copy_sample(tmp_path)
    refs = load_refs_pickle(root / "refcoco/refs(unc).p")
    refs[0]["ann_id"] = -1
    refs[1]["sentences"][0]["sent"] = "   "
    (root / "refcoco/refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    refer = load_refer(root, "refcoco", "unc", SAMPLE_ROOT / "images/mscoco/images/train2014")
    assert len(refer.refs) == 24
    assert refer.skipped == {"unknown_ann_id": 1, "empty_sentence": 1, "no_sentence": 0}
    assert all(s["sent"].strip() for r in refer.refs for s in r["sentences"])


def test_split_outside_splitby_is_an_error(tmp_path):
    root = _copy_sample(tmp_path)
    refs = load_refs_pickle(root / "refcoco/refs(unc).p")
    refs[0]["split"] = "test"
    (root / "refcoco/refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(UserError, match=r"splits \['test'\] are not unc splits"):
        load_refer(root, "refcoco", "unc", SAMPLE_ROOT)


def test_rle_segmentations_decode_like_polygons(sample_refer, tmp_path):
    from pycocotools import mask as mask_utils

    root = _copy_sample(tmp_path)
    instances = json.loads((root / "refcoco/instances.json").read_text())
    ann_id = sample_refer.refs[0]["ann_id"]
    expected = sample_refer.decode_mask(ann_id)
    ann = next(a for a in instances["annotations"] if a["id"] == ann_id)
    rle = mask_utils.encode(np.asfortranarray(expected))
    ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    (root / "refcoco/instances.json").write_text(json.dumps(instances))
    refer = load_refer(root, "refcoco", "unc", SAMPLE_ROOT)
    np.testing.assert_array_equal(refer.decode_mask(ann_id), expected)
    # Uncompressed RLE (counts as a list of run lengths).
    flat = expected.flatten(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    ann["segmentation"] = {"size": list(expected.shape), "counts": np.diff([0, *change]).tolist()}
    (root / "refcoco/instances.json").write_text(json.dumps(instances))
    refer = load_refer(root, "refcoco", "unc", SAMPLE_ROOT)
    np.testing.assert_array_equal(refer.decode_mask(ann_id), expected)
