"""Finding models offline: the packaged MiniLM, local directories, hub ids, weights checks."""

from __future__ import annotations

import hashlib

import pytest
import torch
from transformers import BertConfig, BertModel

from rsis.errors import UserError
from rsis.text.models import load_model, resolve_model, weights_hash


def test_minilm_resolves_to_the_packaged_directory():
    source = resolve_model("minilm")
    assert (source.path / "config.json").is_file()
    assert source.revision == ""
    model = load_model(source)
    assert model.config.hidden_size == 384
    assert not model.training
    expected = hashlib.sha256((source.path / "model.safetensors").read_bytes()).hexdigest()
    assert weights_hash(source) == expected


def test_a_local_directory_is_used_as_is(tmp_path):
    packaged = resolve_model("minilm")
    assert resolve_model(str(packaged.path)).path == packaged.path
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match="is a file"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_a_hub_model_missing_offline_says_how_to_get_it():
    with pytest.raises(UserError) as error:
        resolve_model("rsis-no-such-org/no-such-model")
    message = str(error.value)
    assert "'rsis-no-such-org/no-such-model'" in message
    assert "HF_HOME" in message and "minilm" in message and "save_pretrained" in message


def test_missing_pooler_or_weights_are_refused(tmp_path):
    config = BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "nopooler")
    source = resolve_model(str(tmp_path / "nopooler"))
    with pytest.raises(UserError, match=r"lacks trained weights for \['pooler"):
        load_model(source)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no weights"):
        weights_hash(resolve_model(str(tmp_path / "empty")))
