"""Embedding: masked mean, batching, device choice, and refusal of foreign token files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from rsis.bench.embed import agreement, load_expressions
from rsis.cli import main
from rsis.device import resolve_device
from rsis.errors import UserError
from rsis.text.embed import (
    embed_batch,
    embed_sequences,
    length_batches,
    masked_mean,
)
from rsis.text.models import load_model, load_tokenizer, resolve_model, tokenizer_identity
from rsis.text.tokenize import tokenize_sentences, write_tokens
from tests.helpers import EXPRESSIONS_DIR


@pytest.fixture(scope="module")
def sample() -> list[tuple[int, str, str]]:
    """60 real expressions."""
    frame = load_expressions(EXPRESSIONS_DIR).sample(60, random_state=1)
    return list(frame.itertuples(index=False, name=None))


@pytest.fixture(scope="module")
def minilm():
    source = resolve_model("minilm")
    return load_tokenizer(source), load_model(source)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm):
    """A random 2-layer BertModel (hidden 32, 64 positions) with MiniLM's tokenizer."""
    tokenizer, _ = minilm
    path = tmp_path_factory.mktemp("tiny")
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_sample_tokens(path, sentences, tokenizer, name="minilm", limit=512):
    table = tokenize_sentences(sentences, tokenizer, tokenizer_identity(name, tokenizer), limit)
    write_tokens(table, path)
    return table


def test_masked_mean_averages_real_positions_only():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])
    torch.testing.assert_close(masked_mean(hidden, mask), expected)


def test_padding_does_not_change_the_real_model_embeddings(minilm, sample):
    """A sentence alone equals the same sentence padded in a batch with a long one (1e-5)."""
    tokenizer, model = minilm
    table = tokenize_sentences(sample, tokenizer, tokenizer_identity("minilm", tokenizer), 512)
    short, long = int(np.argmin(table.lengths)), int(np.argmax(table.lengths))
    assert table.lengths[long] - table.lengths[short] >= 5
    sequences = [torch.from_numpy(table.sequence(r).astype(np.int64)) for r in (long, short)]
    cpu = torch.device("cpu")
    with torch.inference_mode():
        alone = embed_batch(model, sequences[1:], tokenizer.pad_token_id, cpu)
        padded = embed_batch(model, sequences, tokenizer.pad_token_id, cpu)
        direct = model(sequences[1][None])
    for one, batch in zip(alone, padded, strict=True):
        assert one.shape == (1, 384) and batch.shape == (2, 384)
        torch.testing.assert_close(batch[1], one[0], atol=1e-5, rtol=0)
    # the mean is over the sentence's own tokens ([CLS] and [SEP] included)
    torch.testing.assert_close(alone[1][0], direct.last_hidden_state[0].mean(0))
    torch.testing.assert_close(alone[0][0], direct.pooler_output[0])


def test_length_batches_never_mix_lengths():
    lengths = np.array([5, 3, 5, 7, 3, 5, 5, 3, 9])
    batches = length_batches(lengths, batch_size=2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(9))
    assert [lengths[b].tolist() for b in batches] == [[3, 3], [3], [5, 5], [5, 5], [7], [9]]
    with pytest.raises(UserError, match="at least 1"):
        length_batches(lengths, 0)


def test_batching_keeps_input_order(tiny_dir, sample):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = load_model(resolve_model(str(tiny_dir)))
    table = tokenize_sentences(sample, tokenizer, tokenizer_identity("tiny", tokenizer), 64)
    results = [
        embed_sequences(model, table.ids, table.ptr, pad_id=0, batch_size=size, progress=False)
        for size in (5, 13, 64)
    ]
    for pooled, mean in results:
        assert pooled.shape == mean.shape == (60, 32)
        assert pooled.dtype == mean.dtype == np.float32
        np.testing.assert_allclose(pooled, results[0][0], atol=1e-5)
        np.testing.assert_allclose(mean, results[0][1], atol=1e-5)
    assert not np.allclose(results[0][1][0], results[0][1][1])  # rows differ: order matters


def test_bf16_embeddings_of_the_real_model_stay_close_to_fp32(minilm, sample):
    """bf16 autocast really runs (results differ) and stays within cosine 0.999 of fp32."""
    tokenizer, model = minilm
    table = tokenize_sentences(sample, tokenizer, tokenizer_identity("minilm", tokenizer), 512)
    pad = tokenizer.pad_token_id
    runs = {
        precision: embed_sequences(
            model, table.ids, table.ptr, pad_id=pad, precision=precision, progress=False
        )
        for precision in ("fp32", "bf16")
    }
    for exact, fast in zip(runs["fp32"], runs["bf16"], strict=True):
        assert fast.dtype == np.float32 and fast.shape == exact.shape == (60, 384)
        cosine, difference = agreement(exact, fast)
        assert cosine > 0.999
        assert difference > 1e-4  # not silently fp32
    with pytest.raises(UserError, match="--precision must be one of"):
        embed_sequences(model, table.ids, table.ptr, pad_id=pad, precision="fp16")


def test_embed_cli_writes_datasets_and_identity(tiny_dir, sample, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    table = write_sample_tokens(tmp_path / "tokens.h5", sample, tokenizer, "tiny", 64)
    out = tmp_path / "embeddings.h5"
    argv = ["embed", "--tokens", str(tmp_path / "tokens.h5"), "--model", str(tiny_dir)]
    assert main([*argv, "--out", str(out), "--batch-size", "16", "--device", "cpu"]) == 0
    model = load_model(resolve_model(str(tiny_dir)))
    pooled, mean = embed_sequences(
        model, table.ids, table.ptr, pad_id=tokenizer.pad_token_id, progress=False
    )
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["sent_id"][:], table.sent_id)
        assert f["pooled"].shape == f["mean"].shape == (60, 32)
        assert f["mean"].dtype == np.float32
        # the model's own embeddings, each under its name, in the token file's order
        np.testing.assert_allclose(f["mean"][:], mean, atol=1e-5)
        np.testing.assert_allclose(f["pooled"][:], pooled, atol=1e-5)
        assert not np.allclose(f["mean"][:], f["pooled"][:], atol=1e-2)
        assert f.attrs["model"] == str(tiny_dir)
        assert f.attrs["hidden_size"] == 32
        assert f.attrs["tokens_hash"] == table.attrs["tokens_hash"]
        assert len(f.attrs["model_hash"]) == 64
        assert f.attrs["precision"] == "fp32"


def test_embed_refuses_tokens_of_another_tokenizer(sample, tmp_path, capsys):
    cased_dir = tmp_path / "cased"
    AutoTokenizer.from_pretrained(
        resolve_model("minilm").path, do_lower_case=False
    ).save_pretrained(cased_dir)
    cased = AutoTokenizer.from_pretrained(cased_dir)
    write_sample_tokens(tmp_path / "tokens.h5", sample[:5], cased, "cased")
    argv = ["embed", "--tokens", str(tmp_path / "tokens.h5"), "--model", "minilm"]
    assert main([*argv, "--out", str(tmp_path / "e.h5")]) == 2
    assert "lowercase: file has False, expected True" in capsys.readouterr().err
    assert not (tmp_path / "e.h5").exists()


def test_embed_refuses_sequences_longer_than_the_model(minilm, tiny_dir, sample, tmp_path, capsys):
    tokenizer, _ = minilm
    long_text = " ".join(s[2] for s in sample[:30])  # over 64 tokens, under 512
    write_sample_tokens(tmp_path / "tokens.h5", [(1, "val", long_text)], tokenizer)
    argv = ["embed", "--tokens", str(tmp_path / "tokens.h5"), "--model", str(tiny_dir)]
    assert main([*argv, "--out", str(tmp_path / "e.h5")]) == 2
    assert "accepts at most 64" in capsys.readouterr().err


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU is visible"):
            resolve_device("cuda")


def test_embed_takes_a_gpu_index_and_refuses_it_in_one_line_without_a_gpu(
    tmp_path, capsys, monkeypatch
):
    """``--device cuda:1`` gets past argparse to ``resolve_device``, which refuses it where no
    GPU is visible, before any file is read (the tokens file does not exist)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["embed", "--tokens", str(tmp_path / "missing.h5"), "--model", "minilm"]
    assert main([*argv, "--out", str(tmp_path / "e.h5"), "--device", "cuda:1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "rsis embed: error: device 'cuda:1' requested but no CUDA GPU is visible to torch "
        f"{torch.__version__}; use --device cpu, or check the GPU, its driver and torch's "
        "CUDA build"
    )


def test_a_gpu_index_beyond_the_visible_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"'cuda:2': this machine has 2 visible GPU\(s\)"):
        resolve_device("cuda:2")
