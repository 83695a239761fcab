"""The picture-blind baselines on a hand-made demo image whose scores are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from rsis.baselines import Named, named_attributes, score_baselines
from rsis.data.refer import Refer
from rsis.errors import UserError

SIZE = (10, 12)
# (colour, shape, rows, columns): disjoint blocks of 10, 15 and 30 pixels (55 in all)
OBJECTS = [
    ("red", "circle", slice(0, 2), slice(0, 5)),
    ("red", "square", slice(3, 6), slice(0, 5)),
    ("blue", "square", slice(7, 10), slice(0, 10)),
]
# referent (object index), its first expression, its template kind
REFERENTS = [
    (0, "the red circle", "attribute"),
    (2, "the blue shape", "attribute"),
    (1, "red square left of the blue square", "relation"),
]


def _rle(rows: slice, columns: slice) -> dict:
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[rows, columns] = 1
    return mask_utils.encode(np.asfortranarray(mask))


def hand_made_refer() -> Refer:
    categories = {1: "circle", 2: "square"}
    ids = {name: cat for cat, name in categories.items()}
    annotations = {
        ann_id: {
            "id": ann_id,
            "image_id": 7,
            "category_id": ids[shape],
            "segmentation": _rle(rows, columns),
            "attributes": {"colour": colour, "size": "big"},
        }
        for ann_id, (colour, shape, rows, columns) in enumerate(OBJECTS, start=1)
    }
    refs = [
        {
            "ref_id": 100 + k,
            "ann_id": index + 1,
            "image_id": 7,
            "split": "val",
            "category_id": annotations[index + 1]["category_id"],
            "sentences": [
                {"sent_id": 200 + k, "sent": sentence},
                {"sent_id": 300 + k, "sent": "x"},
            ],
        }
        for k, (index, sentence, _) in enumerate(REFERENTS)
    ]
    image = {"id": 7, "file_name": "7.png", "height": SIZE[0], "width": SIZE[1]}
    return Refer(Path("."), "demo", "unc", Path("."), refs, {7: image}, annotations, categories)


def test_named_attributes_read_the_referents_phrase_only():
    assert named_attributes("red square left of the blue square") == Named("red", "square")
    assert named_attributes("the small green star") == Named("green", "star")
    assert named_attributes("the topmost circle") == Named(None, "circle")
    assert named_attributes("the big shape below the red cross") == Named(None, None)


def test_baselines_score_as_computed_by_hand():
    scored = score_baselines(hand_made_refer(), "val", SIZE)
    every = scored["every object"].summary()["metrics"]
    assert every["instance_iou"] == pytest.approx((10 + 30 + 15) / 55 / 3)
    assert every["overall_iou"] == pytest.approx(55 / 165)
    colour = scored["named colour"].summary()["metrics"]
    assert colour["instance_iou"] == pytest.approx((10 / 25 + 1 + 15 / 25) / 3)
    assert colour["overall_iou"] == pytest.approx(55 / 80)
    both = scored["named colour and shape"].summary()["metrics"]
    assert both["instance_iou"] == 1.0 and both["overall_iou"] == 1.0


def test_baselines_need_the_demo_attributes():
    refer = hand_made_refer()
    del refer.annotations[2]["attributes"]
    with pytest.raises(UserError, match="annotation 2 of demo has no colour attribute"):
        score_baselines(refer, "val", SIZE)
