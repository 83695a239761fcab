"""``rsis evaluate`` under every-sentence evaluation, the peers' protocols and breakdowns."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rsis.breakdowns import expression_template
from rsis.checkpoint import load_trained_model
from rsis.cli import main
from rsis.data.cache_file import SplitCache
from rsis.data.demo.scenes import make_scene
from rsis.evaluate import evaluate
from rsis.text import EmbeddingTable
from rsis.text.identity import text_identity
from rsis.train import Trainer
from tests.helpers import make_train_config


@pytest.fixture(scope="module")
def run_dir(demo_pipeline, tmp_path_factory):
    """One epoch, sequences of at most 3 referents (so images span several sequences)."""
    out = tmp_path_factory.mktemp("evaluate_run")
    Trainer(make_train_config(demo_pipeline, out, epochs=1, max_referents=3)).run()
    return out


def test_all_scores_every_sentence_once(demo_pipeline, run_dir):
    cache = demo_pipeline / "cache/val.h5"
    text = EmbeddingTable.load(demo_pipeline / "text/mean~pca~8.h5")
    model, payload = load_trained_model(run_dir / "best.pt", text_identity(text))
    every, _, _, original = evaluate(model, payload, cache, text, expression="all")
    first, _, _, _ = evaluate(model, payload, cache, text, expression="first")
    split_cache = SplitCache(cache)
    sent_ids, sent_ptr = split_cache.sent_ids, split_cache.sent_ptr
    table = every.per_referent()
    assert sorted(table["id"]) == sorted(sent_ids.tolist())
    assert sorted(sample[0] for sample in original) == sorted(sent_ids.tolist())
    metrics = every.summary()["metrics"]
    assert metrics["n_samples"] == len(sent_ids) > metrics["n_referents"] == len(sent_ptr) - 1
    # Pass 0 feeds the first sentences in the same sequences: the same masks as `first`.
    firsts = first.per_referent().set_index("id")
    again = table.set_index("id").loc[firsts.index]
    pd.testing.assert_series_equal(again["intersection"], firsts["intersection"])
    pd.testing.assert_series_equal(again["union"], firsts["union"])


def test_protocol_breakdowns_and_predictions_rescored(demo_pipeline, run_dir, tmp_path):
    demo = demo_pipeline / "resources/demo"
    refer_args = ["--refs-root", str(demo), "--dataset", "demo", "--images", str(demo / "images")]
    command = [
        "evaluate", "--checkpoint", str(run_dir / "best.pt"),
        "--cache", str(demo_pipeline / "cache/val.h5"),
        "--text", str(demo_pipeline / "text/mean~pca~8.h5"), "--expression", "all",
        "--protocol", "cris", "--out-dir", str(tmp_path), *refer_args,
    ]  # fmt: skip
    assert main(command) == 0
    record = json.loads((tmp_path / "val~all.json").read_text())
    assert record["protocol"] == "cris" and record["expression"] == "all"
    assert "original image size" in record["conventions"]["resolution"]
    assert "sigmoid > 0.35" in record["conventions"]["threshold"]
    total = record["metrics"]["n_samples"]
    for name in ("category", "expression_type"):
        parts = record["breakdowns"][name]
        assert sum(part["n_samples"] for part in parts.values()) == total
    assert set(record["breakdowns"]["expression_type"]) <= {"attribute", "extreme", "relation"}
    # The written predictions, scored by `rsis score` under the same protocol: same numbers.
    out = tmp_path / "rescored.json"
    score = ["score", *refer_args, "--split", "val", "--protocol", "cris", "--out", str(out)]
    assert main([*score, "--predictions", str(tmp_path / "val~all.predictions.json")]) == 0
    rescored = json.loads(out.read_text())
    for key, value in record["metrics"].items():
        assert rescored["metrics"][key] == pytest.approx(value, abs=1e-12), key
    for name, parts in record["breakdowns"].items():
        for label, metrics in parts.items():
            assert rescored["breakdowns"][name][label] == pytest.approx(metrics, abs=1e-12)


def test_expression_templates_read_back_as_generated():
    """The template read from each sentence is the kind the generator wrote it with."""
    checked = {"attribute": 0, "extreme": 0, "relation": 0}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        scene = make_scene(rng, 120, 214, crowded=seed % 2 == 0)
        for expression in (e for per_object in scene.expressions for e in per_object):
            assert expression_template(expression.text) == expression.kind, expression.text
            checked[expression.kind] += 1
    assert min(checked.values()) > 0, checked
