"""``rsis tokenize / embed / reduce / bench embed`` end to end on the real RefCOCO sample."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

from rsis.bench.embed import bert_base_shaped, load_expressions, useful_flops
from rsis.cli import main
from rsis.text import EmbeddingTable
from rsis.text.models import MINILM, load_model, load_tokenizer, resolve_model
from rsis.text.tokenize import encode
from tests.helpers import EXPRESSIONS_DIR, SAMPLE_ROOT


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """tokens.h5, embeddings.h5 and two reduced files of the sample, made with the CLI."""
    out = tmp_path_factory.mktemp("text")
    sample = ["--refs-root", str(SAMPLE_ROOT), "--dataset", "refcoco", "--split-by", "unc"]
    assert main(["tokenize", *sample, "--model", "minilm", "--out", str(out / "tokens.h5")]) == 0
    common = ["--tokens", str(out / "tokens.h5")]
    embed = ["embed", *common, "--model", "minilm", "--device", "cpu", "--batch-size", "16"]
    assert main([*embed, "--out", str(out / "embeddings.h5")]) == 0
    reduce = ["reduce", "--embeddings", str(out / "embeddings.h5"), *common]
    pca = ["--embedding", "mean", "--transform", "pca", "--dim", "8", "--fit-split", "val"]
    assert main([*reduce, *pca, "--out", str(out / "mean~pca~8.h5")]) == 0
    none = ["--embedding", "pooled", "--transform", "none", "--dim", "native"]
    assert main([*reduce, *none, "--out", str(out / "pooled~none~native.h5")]) == 0
    return out


def test_tokens_cover_every_sentence_of_the_sample(text_dir, sample_refer):
    with h5py.File(text_dir / "tokens.h5", "r") as f:
        assert f["sent_id"][:].tolist() == [s[0] for s in sample_refer.sentences()]
        assert f["split"].asstr()[:].tolist() == [s[1] for s in sample_refer.sentences()]
        assert len(f["input_ids/ptr"]) == len(f["sent_id"]) + 1 == 75
        assert f.attrs["tokenizer"] == "minilm"
        assert f.attrs["dataset"] == "refcoco"


def test_embeddings_and_reductions(text_dir, sample_refer):
    with h5py.File(text_dir / "embeddings.h5", "r") as f:
        mean, pooled = f["mean"][:], f["pooled"][:]
        assert mean.shape == pooled.shape == (74, 384)
        assert f.attrs["model"] == "minilm"
    split = np.array([s[1] for s in sample_refer.sentences()])
    sent_ids = [s[0] for s in sample_refer.sentences()]

    native = EmbeddingTable.load(text_dir / "pooled~none~native.h5")
    assert native.dim == 384
    np.testing.assert_array_equal(native.lookup(sent_ids), pooled)

    reduced = EmbeddingTable.load(text_dir / "mean~pca~8.h5")
    assert reduced.dim == 8
    assert reduced.attrs["fit_split"] == "val"
    assert reduced.attrs["model"] == "minilm"
    with h5py.File(text_dir / "mean~pca~8.h5", "r") as f:
        w, center = f["components"][:], f["mean"][:]
        assert w.shape == (8, 384) and f["explained_variance"].shape == (8,)
    np.testing.assert_allclose(center, mean[split == "val"].mean(0), atol=1e-5)
    np.testing.assert_allclose(reduced.lookup(sent_ids), mean @ w.T - w @ center, atol=1e-4)


def test_reduce_refuses_bad_requests(text_dir, sample_refer, capsys):
    reduce = ["reduce", "--embeddings", str(text_dir / "embeddings.h5")]
    reduce += ["--tokens", str(text_dir / "tokens.h5"), "--embedding", "mean"]
    out = ["--out", str(text_dir / "bad.h5")]
    assert main([*reduce, "--transform", "none", "--dim", "384", *out]) == 2
    assert "--dim native" in capsys.readouterr().err
    assert main([*reduce, "--transform", "pca", "--dim", "20", "--fit-split", "testA", *out]) == 2
    n_test_a = sum(split == "testA" for _, split, _ in sample_refer.sentences())
    error = capsys.readouterr().err
    assert f"split 'testA' has {n_test_a} expressions" in error
    assert "(in config.yaml: grid.table1.dims, grid.table2.dim" in error  # under Snakemake
    assert main([*reduce, "--transform", "pca", "--dim", "4", *out]) == 2  # default: train
    error = capsys.readouterr().err
    assert "'train' has no expressions (language.fit_split in config.yaml)" in error
    assert not (text_dir / "bad.h5").exists()


def test_reduce_refuses_embeddings_of_other_tokens(text_dir, tmp_path, capsys):
    other = ["--refs-root", str(SAMPLE_ROOT), "--dataset", "refcoco", "--split-by", "unc"]
    tokens = tmp_path / "tokens.h5"
    assert main(["tokenize", *other, "--model", "minilm", "--out", str(tokens)]) == 0
    with h5py.File(tokens, "a") as f:  # same sentences, tokens of another run
        f.attrs["tokens_hash"] = "0" * 64
    argv = ["reduce", "--embeddings", str(text_dir / "embeddings.h5"), "--tokens", str(tokens)]
    argv += ["--embedding", "mean", "--transform", "none", "--dim", "native"]
    assert main([*argv, "--out", str(tmp_path / "r.h5")]) == 2
    assert "tokens_hash" in capsys.readouterr().err


def test_tokenize_with_an_unavailable_hub_model_fails_clearly(tmp_path, capsys):
    sample = ["--refs-root", str(SAMPLE_ROOT), "--dataset", "refcoco", "--split-by", "unc"]
    argv = ["tokenize", *sample, "--model", "rsis-no-such-org/bert", "--out", str(tmp_path / "t")]
    assert main(argv) == 2
    assert "HF_HOME" in capsys.readouterr().err


def _error(capsys) -> str:
    """The one ``rsis <cmd>: error:`` line of the last command."""
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_embed_and_reduce_name_the_step_that_writes_each_input(text_dir, tmp_path, capsys):
    empty, missing = tmp_path / "empty.h5", tmp_path / "missing.h5"
    empty.write_bytes(b"")
    split_cache = tmp_path / "val.h5"  # an HDF5 file of another step (rsis prepare)
    with h5py.File(split_cache, "w") as f:
        f.create_dataset("images", data=np.zeros((1, 2, 2, 3), np.uint8))
        f.attrs["split"] = "val"
    tokens, embeddings = str(text_dir / "tokens.h5"), str(text_dir / "embeddings.h5")
    embed = ["embed", "--model", "minilm", "--out", str(tmp_path / "e.h5"), "--tokens"]
    reduce = ["reduce", "--embedding", "mean", "--transform", "none", "--dim", "native"]
    reduce += ["--out", str(tmp_path / "r.h5")]
    cases = [
        ([*embed, str(empty)], f"{empty} is not a readable HDF5 file", "rerun `rsis tokenize`"),
        ([*embed, str(missing)], f"{missing} not found", "run `rsis tokenize`"),
        (
            [*embed, str(split_cache)],
            f"{split_cache} is not a tokens file from `rsis tokenize`",
            "give the file that `rsis tokenize` writes",
        ),
        (
            [*reduce, "--tokens", tokens, "--embeddings", str(empty)],
            f"{empty} is not a readable HDF5 file",
            "rerun `rsis embed`",
        ),
        (
            [*reduce, "--tokens", str(empty), "--embeddings", embeddings],
            f"{empty} is not a readable HDF5 file",
            "rerun `rsis tokenize`",
        ),
        (
            [*reduce, "--tokens", tokens, "--embeddings", tokens],
            f"{tokens} is not an embeddings file from `rsis embed` (it lacks pooled, mean",
            "give the file that `rsis embed` writes",
        ),
    ]
    for argv, what, fix in cases:
        assert main(argv) == 2, argv
        error = _error(capsys)
        assert what in error and fix in error and "the rsis step" not in error, error
    assert not (tmp_path / "e.h5").exists() and not (tmp_path / "r.h5").exists()


def test_tokenize_with_a_folder_without_a_tokenizer_fails_clearly(tmp_path, capsys):
    sample = ["--refs-root", str(SAMPLE_ROOT), "--dataset", "refcoco", "--split-by", "unc"]
    bare, config_only = tmp_path / "bare", tmp_path / "config_only"
    bare.mkdir()
    config_only.mkdir()  # transformers makes a BERT tokenizer of 5 special tokens from this
    (config_only / "config.json").write_text('{"model_type": "bert"}')
    reasons = {
        bare: "holds no tokenizer transformers can load",
        config_only: "holds no tokenizer vocabulary",
    }
    for folder, reason in reasons.items():
        argv = ["tokenize", *sample, "--model", str(folder), "--out", str(tmp_path / "t.h5")]
        assert main(argv) == 2
        error = _error(capsys)
        assert f"model '{folder}': {folder} {reason}" in error
        assert "save_pretrained" in error
    assert not (tmp_path / "t.h5").exists()


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_embed_prints_its_figures(tmp_path, capsys, restore_threads):
    load_expressions(EXPRESSIONS_DIR).head(40).to_csv(tmp_path / "refcoco_unc_val.csv")
    argv = ["bench", "embed", "--csv-dir", str(tmp_path), "--batch-size", "16", "--threads", "1"]
    assert main([*argv, "--single-count", "10", "--matmul-size", "256", "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^expressions +40 \(mean [\d.]+ tokens", printed, re.M)
    assert "timed on 10 of 40" in printed
    assert re.search(r"^threads +1 ", printed, re.M)
    for precision in ("fp32", "bf16"):
        for label, unit in (("batched", "expr/s"), ("effective", "GFLOP/s"), ("peak", "GFLOP/s")):
            found = re.search(rf"^{precision} [a-z ]*{label} +([\d.]+) {unit}", printed, re.M)
            assert float(found[1]) > 0, (precision, label)
    assert float(re.search(r"^bf16 vs fp32 .* min cosine ([\d.]+)", printed, re.M)[1]) > 0.999


def test_bench_embed_times_a_bert_base_shaped_model(tmp_path, capsys, restore_threads):
    tokenizer = load_tokenizer(resolve_model(MINILM))
    bert = bert_base_shaped(tokenizer)
    assert (bert.config.num_hidden_layers, bert.config.hidden_size) == (12, 768)
    assert bert.config.vocab_size == max(28_996, len(tokenizer))
    ids, ptr, _ = encode(tokenizer, ["the man on the left", "red car"], 64)
    minilm = load_model(resolve_model(MINILM))
    assert useful_flops(bert, ids, ptr) > 5 * useful_flops(minilm, ids, ptr)
    load_expressions(EXPRESSIONS_DIR).head(40).to_csv(tmp_path / "refcoco_unc_val.csv")
    argv = ["bench", "embed", "--csv-dir", str(tmp_path), "--bert-base", "--count", "12"]
    argv += ["--precision", "fp32", "--single-count", "4", "--matmul-size", "128", "--threads", "1"]
    assert main([*argv, "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^model +bert-base-cased's shape, random weights", printed, re.M)
    assert re.search(r"^expressions +12 \(mean", printed, re.M)
    cpu = re.search(
        r"^fp32 batched CPU +([\d.]+) CPU ms per expression \(([\d.]+) CPU s", printed, re.M
    )
    per_expression = float(cpu[1])  # ms, from the run's CPU seconds over 12 expressions
    assert per_expression > 0
    assert per_expression == pytest.approx(1000 * float(cpu[2]) / 12, abs=0.5)
    refcoco = re.search(r"142,210 expressions: ([\d.]+) CPU min", printed)
    # Both figures are printed rounded: the total to 0.05 min, the per-expression cost to
    # 0.005 ms, which is 142,210 x 0.005 ms in minutes once multiplied out.
    rounding = 0.05 + 142_210 * 0.005 / 1000 / 60
    assert float(refcoco[1]) == pytest.approx(142_210 * per_expression / 1000 / 60, abs=rounding)
