"""Tokenization of real RefCOCO expressions with the packaged all-MiniLM tokenizer."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from transformers import AutoTokenizer

from rsis.bench.embed import load_expressions
from rsis.errors import UserError
from rsis.text.models import load_tokenizer, max_length, resolve_model, tokenizer_identity
from rsis.text.tokenize import read_tokens, tokenize_sentences, write_tokens
from tests.helpers import EXPRESSIONS_DIR


@pytest.fixture(scope="module")
def minilm():
    source = resolve_model("minilm")
    return source, load_tokenizer(source)


@pytest.fixture(scope="module")
def sample() -> list[tuple[int, str, str]]:
    """300 real expressions from val, testA and testB."""
    frame = load_expressions(EXPRESSIONS_DIR).sample(300, random_state=0)
    return list(frame.itertuples(index=False, name=None))


def tokenize(sentences, tokenizer, limit=512):
    return tokenize_sentences(sentences, tokenizer, tokenizer_identity("minilm", tokenizer), limit)


def test_ids_equal_the_tokenizer_run_directly(minilm, sample):
    _, tokenizer = minilm
    table = tokenize(sample, tokenizer)
    assert table.sent_id.tolist() == [s[0] for s in sample]
    assert table.split.tolist() == [s[1] for s in sample]
    for row, (_, _, text) in enumerate(sample):
        assert table.sequence(row).tolist() == tokenizer(text)["input_ids"]
    assert table.attrs["n_truncated"] == 0
    assert table.lengths.min() >= 3  # [CLS], at least one word piece, [SEP]


def test_hdf5_round_trip_keeps_ids_text_and_identity(minilm, sample, tmp_path):
    _, tokenizer = minilm
    table = tokenize([*sample[:20], (10**9, "val", "Café 🙂 左边的人")], tokenizer)
    write_tokens(table, tmp_path / "tokens.h5")
    back = read_tokens(tmp_path / "tokens.h5")
    np.testing.assert_array_equal(back.ids, table.ids)
    np.testing.assert_array_equal(back.ptr, table.ptr)
    np.testing.assert_array_equal(back.sent_id, table.sent_id)
    assert back.text.tolist() == table.text.tolist()
    assert back.text[-1] == "Café 🙂 左边的人"
    assert back.split.tolist() == table.split.tolist()
    assert back.ids.dtype == np.int32
    assert back.attrs["tokenizer"] == "minilm"
    assert back.attrs["lowercase"] is True
    assert len(back.attrs["vocab_hash"]) == 64
    assert back.attrs["tokens_hash"] == table.attrs["tokens_hash"]


def test_limit_truncates_with_the_tokenizer_and_counts(minilm, sample, caplog):
    _, tokenizer = minilm
    long_text = " ".join(s[2] for s in sample[:150])  # about 800 word pieces
    limit = max_length(*minilm)
    assert limit == 512
    sentences = [*sample[:5], (1, "val", long_text)]
    with caplog.at_level(logging.INFO, logger="rsis.text.tokenize"):
        table = tokenize(sentences, tokenizer, limit)
    assert len(tokenizer(long_text)["input_ids"]) > limit
    last = table.sequence(5).tolist()
    assert len(last) == limit
    assert last == tokenizer(long_text, truncation=True, max_length=limit)["input_ids"]
    assert last[-1] == tokenizer.sep_token_id
    assert table.attrs["n_truncated"] == 1
    assert "1 expressions exceed the model's limit of 512 tokens" in caplog.text
    for row in range(5):  # short expressions are untouched
        assert table.sequence(row).tolist() == tokenizer(sample[row][2])["input_ids"]


def test_empty_and_whitespace_become_cls_sep_with_a_warning(minilm, caplog):
    _, tokenizer = minilm
    with caplog.at_level(logging.WARNING, logger="rsis.text.tokenize"):
        table = tokenize([(7, "val", ""), (8, "val", "  \t "), (9, "val", "man")], tokenizer)
    special = [tokenizer.cls_token_id, tokenizer.sep_token_id]
    assert table.sequence(0).tolist() == special
    assert table.sequence(1).tolist() == special
    assert table.sequence(2).tolist() == tokenizer("man")["input_ids"]
    assert "2 empty or whitespace-only expressions" in caplog.text
    assert "[7, 8]" in caplog.text


def test_non_ascii_follows_the_tokenizer(minilm):
    _, tokenizer = minilm
    texts = ["Café on the LEFT", "cafe on the left", "dog 🙂", "左边的人"]
    table = tokenize([(i, "val", t) for i, t in enumerate(texts)], tokenizer)
    # uncased WordPiece lowercases and strips accents: the two spellings give the same ids
    assert table.sequence(0).tolist() == table.sequence(1).tolist()
    assert tokenizer.unk_token_id in table.sequence(2).tolist()  # emoji: not in the vocabulary
    cjk = tokenizer.convert_ids_to_tokens(table.sequence(3).tolist())[1:-1]
    assert len(cjk) == 4  # one token per CJK character
    assert "的" in cjk and "人" in cjk


def test_casing_is_observed_not_configured(minilm, tmp_path):
    source, tokenizer = minilm
    AutoTokenizer.from_pretrained(source.path, do_lower_case=False).save_pretrained(tmp_path)
    cased = tokenizer_identity("cased", AutoTokenizer.from_pretrained(tmp_path))
    uncased = tokenizer_identity("minilm", tokenizer)
    assert uncased["lowercase"] is True
    assert cased["lowercase"] is False
    assert cased["vocab_hash"] == uncased["vocab_hash"]  # same vocabulary, other casing


def test_bad_sentence_lists_are_refused(minilm):
    _, tokenizer = minilm
    with pytest.raises(UserError, match=r"sent_id values occur more than once: \[5\]"):
        tokenize([(5, "val", "a"), (5, "testA", "b")], tokenizer)
    with pytest.raises(UserError, match="no expressions"):
        tokenize([], tokenizer)
