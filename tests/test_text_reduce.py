"""PCA reduction (fit split only) and the EmbeddingTable, on real MiniLM embeddings."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from sklearn.decomposition import PCA

from rsis.bench.embed import load_expressions
from rsis.errors import UserError
from rsis.text import EmbeddingTable
from rsis.text.embed import embed_sequences
from rsis.text.models import load_model, load_tokenizer, resolve_model
from rsis.text.reduce import parse_dim, reduce_embeddings
from rsis.text.tokenize import encode
from tests.helpers import EXPRESSIONS_DIR


@pytest.fixture(scope="module")
def real():
    """Mean embeddings (MiniLM) of 240 real expressions and their splits (val/testA/testB)."""
    frame = load_expressions(EXPRESSIONS_DIR).sample(240, random_state=2)
    source = resolve_model("minilm")
    ids, ptr, _ = encode(load_tokenizer(source), frame["sent"].tolist(), 512)
    _, mean = embed_sequences(load_model(source), ids, ptr, pad_id=0, progress=False)
    return mean, frame["split"].to_numpy(dtype=object)


def test_pca_never_sees_other_splits(real):
    """Changing the testA/testB rows changes neither the fit nor the val rows' output."""
    vectors, split = real
    fit = split == "val"
    assert 40 < fit.sum() < len(split) - 40
    shifted = vectors.copy()
    shifted[~fit] = 50 * shifted[~fit] + 100  # a leak would move the mean and the components
    a = reduce_embeddings(vectors, split, "pca", 16, "val")
    b = reduce_embeddings(shifted, split, "pca", 16, "val")
    np.testing.assert_allclose(a.pca.mean_, vectors[fit].mean(0), atol=1e-6)
    np.testing.assert_allclose(b.pca.components_, a.pca.components_, atol=1e-6)
    np.testing.assert_allclose(b.embedding[fit], a.embedding[fit], atol=1e-5)
    reference = PCA(16, svd_solver="full").fit(vectors[fit])
    np.testing.assert_allclose(a.embedding, reference.transform(vectors), atol=1e-4)
    # every split is projected with the val fit: W x + b with W = components, b = -W mean
    # (float32 sums of inputs near 100: absolute rounding up to about 4e-5 on this AMD EPYC,
    # where a relative tolerance alone failed on outputs near 0; a leak moves them by tens)
    w = a.pca.components_
    expected = shifted[~fit] @ w.T - w @ a.pca.mean_
    np.testing.assert_allclose(b.embedding[~fit], expected, rtol=1e-4, atol=1e-3)


def test_pca_output_dims_and_dtype(real):
    vectors, split = real
    reduction = reduce_embeddings(vectors, split, "pca", 8, "val")
    assert reduction.embedding.shape == (len(vectors), 8)
    assert reduction.embedding.dtype == np.float32
    assert np.all(np.diff(reduction.pca.explained_variance_) <= 0)
    native = reduce_embeddings(vectors, split, "none", None, "val")
    np.testing.assert_array_equal(native.embedding, vectors)
    assert native.pca is None


def test_pca_refuses_more_dims_than_fit_expressions(real):
    vectors, split = real
    n_test_b = int((split == "testB").sum())
    with pytest.raises(UserError, match=f"split 'testB' has {n_test_b} expressions"):
        reduce_embeddings(vectors, split, "pca", n_test_b + 1, "testB")
    with pytest.raises(UserError, match="splits present: testA, testB, val"):
        reduce_embeddings(vectors, split, "pca", 8, "train")


def test_dim_must_match_the_transform():
    assert parse_dim("none", "native") is None
    assert parse_dim("pca", "64") == 64
    with pytest.raises(UserError, match="--dim native"):
        parse_dim("none", "384")
    for bad in ("native", "0", "-3", "x"):
        with pytest.raises(UserError, match="positive integer"):
            parse_dim("pca", bad)


def test_embedding_table_looks_up_by_sent_id(tmp_path):
    path = tmp_path / "mean~pca~2.h5"
    with h5py.File(path, "w") as f:
        f["sent_id"] = np.array([30, 10, 20])
        f["embedding"] = np.array([[3, 3], [1, 1], [2, 2]], dtype=np.float32)
        f.attrs["transform"] = "pca"
    table = EmbeddingTable.load(path)
    assert table.dim == 2 and len(table) == 3
    assert table.attrs["transform"] == "pca"
    looked_up = table.lookup([20, 30, 10, 20])
    assert looked_up.dtype == np.float32
    np.testing.assert_array_equal(looked_up[:, 0], [2, 3, 1, 2])
    with pytest.raises(UserError, match=r"sent_id \[15, 99\] not in .*mean~pca~2.h5"):
        table.lookup(np.array([10, 15, 99]))


def test_embedding_table_refuses_other_files(tmp_path):
    path = tmp_path / "embeddings.h5"
    with h5py.File(path, "w") as f:
        f["sent_id"] = np.array([1])
        f["mean"] = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(UserError, match="rsis reduce"):
        EmbeddingTable.load(path)
