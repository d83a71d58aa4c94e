from __future__ import annotations

import json

import numpy as np
import pytest

from ctxvec.config import IndexConfig
from ctxvec.errors import UserInputError
from ctxvec.index import faiss_index
from ctxvec.index.faiss_index import REMOVED_FILE, FaissIndex, choose_factory
from ctxvec.index.recall import exact_search, recall_at_k
from ctxvec.index.torch_exact import TorchExactIndex

FAMILIES = ["Flat", "HNSW16", "IVF16,Flat"]


def _vectors(n=2000, d=32, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ids(n):
    return np.arange(n, dtype=np.int64) * 10 + 7  # ids are not row numbers


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
    with pytest.raises(UserInputError, match="cannot train"):  # 10 points, 64 lists
        FaissIndex.build(x, np.arange(10), "IVF64,Flat")
    index = FaissIndex.build(x, np.arange(10))
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.zeros((1, 5), dtype=np.float32), 3)
    assert index.search(x[:1], 100)[1].shape == (1, 10)  # k is capped at the count


@pytest.mark.parametrize("factory", FAMILIES)
@pytest.mark.parametrize("every", [3, 150])  # 667 allowed (selector), 14 (exact over them)
def test_filters_search_only_allowed_ids(factory, every, monkeypatch):
    monkeypatch.setattr(faiss_index, "EXACT_SUBSET_MAX", 100)
    x = _vectors(2000)
    ids = _ids(2000)
    index = FaissIndex.build(x, ids, factory, nprobe=16, ef_search=256)
    allowed_rows = np.arange(0, 2000, every)
    allowed = ids[allowed_rows]
    scores, got = index.search(x[:20], 10, allowed)
    assert np.isin(got[got >= 0], allowed).all()
    # the same as exact search among the allowed vectors
    truth = allowed[exact_search(x[allowed_rows], x[:20], 10)]
    recall = np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth, got, strict=True)])
    assert recall >= (0.9 if factory.startswith("HNSW") and every == 3 else 1.0)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    empty = index.search(x[:2], 5, np.zeros(0, dtype=np.int64))[1]
    assert (empty == -1).all()


def test_auto_factory_rule():
    cfg = IndexConfig(auto_exact_max=1000, train_sample=100_000)
    assert choose_factory(1000, 384, cfg) == "Flat"
    # 1001 training points / 39 per list allow at most 25 lists -> 16
    assert choose_factory(1001, 384, cfg) == "IVF16,Flat"
    # 4 sqrt(n) = 4000 -> 2048 (100k training points would allow 2564)
    assert choose_factory(1_000_000, 384, cfg, memory_bytes=1 << 34) == "IVF2048,Flat"
    # 4 sqrt(2M) = 5657 -> 4096, but 100k training points cap it at 2048; 400k do not
    assert choose_factory(2_000_000, 384, cfg, memory_bytes=1 << 34) == "IVF2048,Flat"
    assert choose_factory(2_000_000, 384, cfg.model_copy(update={"train_sample": 400_000}),
                          memory_bytes=1 << 34) == "IVF4096,Flat"
    # 1M float32 x 384 = 1.5 GB: over a 1 GiB budget, PQ with 4 dims per byte
    assert choose_factory(1_000_000, 384, cfg, memory_bytes=1 << 30) == "IVF2048,PQ96"
    assert choose_factory(5000, 30, cfg, memory_bytes=1000) == "IVF128,PQ6"


def test_auto_stays_exact_only_where_exact_search_is_cheap():
    """By default ``auto`` is exact up to 10k vectors: at 30k, exact search of a batch of 32
    queries cost 12-45x an IVF search at recall@10 >= 0.97 (docs/benchmarks.md)."""
    cfg = IndexConfig()
    assert cfg.auto_exact_max == 10_000
    assert choose_factory(10_000, 384, cfg) == "Flat"
    assert choose_factory(30_000, 384, cfg, memory_bytes=1 << 34) == "IVF512,Flat"
    assert choose_factory(100_000, 384, cfg, memory_bytes=1 << 34) == "IVF1024,Flat"


def test_auto_factory_builds_an_approximate_index_with_high_recall():
    x = _vectors(3000)
    cfg = IndexConfig(auto_exact_max=1000, train_sample=3000)
    factory = choose_factory(len(x), x.shape[1], cfg)
    assert factory == "IVF64,Flat"  # 3000 / 39 = 76 lists at most
    index = FaissIndex.build(x, _ids(3000), factory, train_size=cfg.train_sample, nprobe=64)
    assert index.family == "ivf" and index.nprobe == 64
    assert recall_at_k(index, x, _ids(3000), 100) == 1.0


def test_torch_exact_matches_faiss_flat():
    x = _vectors(3000, 48, seed=1)
    ids = _ids(3000)
    flat = FaissIndex.build(x, ids, "Flat")
    exact = TorchExactIndex.from_index(flat, device="cpu")
    assert exact.count == 3000 and exact.dim == 48
    q = _vectors(40, 48, seed=2)
    for allowed in (None, ids[::7], ids[:3]):
        s_torch, i_torch = exact.search(q, 10, allowed)
        s_faiss, i_faiss = flat.search(q, 10, allowed)
        assert np.array_equal(i_torch, i_faiss)
        valid = i_faiss >= 0
        assert np.allclose(s_torch[valid], s_faiss[valid], atol=1e-5)
    assert (exact.search(q, 10, ids[:3])[1][:, 3:] == -1).all()  # 3 allowed: 7 empty slots
    with pytest.raises(ValueError, match="dimension"):
        exact.search(np.zeros((1, 5), dtype=np.float32), 3)


@pytest.mark.parametrize("factory", FAMILIES)
def test_save_writes_the_files_earlier_versions_wrote(factory, tmp_path):
    x = _vectors(500)
    index = FaissIndex.build(x, _ids(500), factory, nprobe=8, ef_search=64)
    index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss", "index.json"]
    assert json.loads((tmp_path / "index.json").read_text()) == {"factory": factory, "removed": 0}
    loaded = FaissIndex.load(tmp_path)
    assert loaded.factory == factory and (loaded.nprobe, loaded.ef_search) == (
        index.nprobe, index.ef_search)
    np.save(tmp_path / REMOVED_FILE, np.array([7]))  # tombstones: no longer applied, refused
    with pytest.raises(UserInputError, match="rebuild the index"):
        FaissIndex.load(tmp_path)
