"""Language stage: tokenize, embed and reduce referring expressions (docs/language.md)."""

from rsis.text.table import EmbeddingTable

__all__ = ["EmbeddingTable"]
