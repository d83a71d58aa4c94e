from __future__ import annotations

import faiss
import numpy as np
import pytest

from ctxvec.index.faiss_index import FaissIndex, exact_search, recall_at_k


def _vectors(n=2000, d=32, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF16,Flat"])
def test_build_search_save_load(factory, tmp_path):
    x = _vectors()
    ids = np.arange(len(x), dtype=np.int64) * 10 + 7  # ids are not row numbers
    index = FaissIndex.build(x, ids, factory)
    assert index.count == len(x) and index.dim == 32
    scores, got = index.search(x[:5], 3)
    if factory == "Flat":
        assert list(got[:, 0]) == list(ids[:5])
        assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    if factory.startswith("IVF"):  # probing every list makes IVF exhaustive
        faiss.extract_index_ivf(index.index).nprobe = 16
    recall = recall_at_k(index, x, ids, n=100)
    assert recall >= (0.9 if factory.startswith("HNSW") else 1.0)
    index.save(tmp_path)
    loaded = FaissIndex.load(tmp_path, factory)
    assert loaded.count == len(x)
    assert np.array_equal(loaded.search(x[:5], 3)[1], index.search(x[:5], 3)[1])


def test_exact_search_matches_numpy():
    x = _vectors(300)
    q = x[:10]
    truth = np.argsort(-(q @ x.T), axis=1)[:, :5]
    assert np.array_equal(exact_search(x, q, 5), truth)


def test_rejects_bad_input():
    x = _vectors(10)
    with pytest.raises(ValueError, match="duplicate ids"):
        FaissIndex.build(x, np.zeros(10, dtype=np.int64))
    with pytest.raises(ValueError, match="factory"):
        FaissIndex.build(x, np.arange(10), "NotAnIndex")
    index = FaissIndex.build(x, np.arange(10))
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.zeros((1, 5), dtype=np.float32), 3)
    assert index.search(x[:1], 100)[1].shape == (1, 10)  # k is capped at the count
