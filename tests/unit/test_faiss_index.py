from __future__ import annotations

import faiss
import numpy as np
import pytest

from ctxvec.config import IndexConfig
from ctxvec.errors import UserInputError
from ctxvec.index import faiss_index
from ctxvec.index.faiss_index import (
    FaissIndex,
    choose_factory,
    exact_search,
    recall_at_k,
)
from ctxvec.index.torch_exact import TorchExactIndex

FAMILIES = ["Flat", "HNSW16", "IVF16,Flat"]


def _vectors(n=2000, d=32, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ids(n):
    return np.arange(n, dtype=np.int64) * 10 + 7  # ids are not row numbers


@pytest.mark.parametrize("factory", FAMILIES)
def test_build_search_save_load(factory, tmp_path):
    x = _vectors()
    ids = _ids(len(x))
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
    with pytest.raises(UserInputError, match="cannot train"):  # 10 points, 64 lists
        FaissIndex.build(x, np.arange(10), "IVF64,Flat")
    index = FaissIndex.build(x, np.arange(10))
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.zeros((1, 5), dtype=np.float32), 3)
    with pytest.raises(ValueError, match="dimension"):
        index.add(np.zeros((1, 5), dtype=np.float32), np.array([99]))
    assert index.search(x[:1], 100)[1].shape == (1, 10)  # k is capped at the count


@pytest.mark.parametrize("factory", FAMILIES)
def test_add_remove_upsert_keep_one_vector_per_id(factory, tmp_path):
    x = _vectors(2000)
    ids = _ids(2000)
    index = FaissIndex.build(x[:1500], ids[:1500], factory, nprobe=16)
    index.add(x[1500:], ids[1500:])
    assert index.count == 2000
    with pytest.raises(ValueError, match="already in the index"):
        index.add(x[:3], ids[:3])
    with pytest.raises(ValueError, match="duplicate ids"):
        index.add(x[:2], np.array([5, 5]))
    assert index.count == 2000  # a refused add changes nothing

    gone = ids[100:200]
    assert index.remove(np.concatenate([gone, [123456789]])) == 100  # unknown ids are ignored
    assert index.count == 1900 and not index.contains(gone).any()
    got = index.search(x[100:200], 10)[1]
    assert not np.isin(got, gone).any()  # removed ids never come back (HNSW: tombstones)

    # upsert: ids 0..49 move to the vectors of rows 1000..1049; removed 100..149 come back
    moved = np.concatenate([ids[:50], ids[100:150]])
    new = np.concatenate([x[1000:1050], x[100:150]])
    index.upsert(new, moved)
    assert index.count == 1950
    live = index.live_ids()
    assert len(live) == len(np.unique(live)) == 1950
    scores, top = index.search(x[1000:1050], 2)
    assert set(top[:, :2].ravel()) == set(ids[:50]) | set(ids[1000:1050])  # both copies
    assert np.allclose(index.reconstruct(ids[:3]), x[1000:1003], atol=1e-6)
    assert index.search(x[100:150], 1)[1][:, 0].tolist() == ids[100:150].tolist()

    index.save(tmp_path)
    loaded = FaissIndex.load(tmp_path)
    assert loaded.factory == factory and loaded.count == 1950
    assert np.array_equal(loaded.live_ids(), live)
    assert not np.isin(loaded.search(x[150:200], 10)[1], gone[50:]).any()


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


def test_filters_skip_removed_hnsw_vectors():
    x = _vectors(500)
    ids = _ids(500)
    index = FaissIndex.build(x, ids, "HNSW16")
    index.remove(ids[:5])
    got = index.search(x[:5], 5, ids[:10])[1]  # allowed includes removed ids
    assert np.isin(got[got >= 0], ids[5:10]).all() and (got >= 0).sum() == 25


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


def test_auto_factory_builds_an_approximate_index_with_high_recall():
    x = _vectors(3000)
    cfg = IndexConfig(auto_exact_max=1000, train_sample=3000)
    factory = choose_factory(len(x), x.shape[1], cfg)
    assert factory == "IVF64,Flat"  # 3000 / 39 = 76 lists at most
    index = FaissIndex.build(x, _ids(3000), factory, train_size=cfg.train_sample, nprobe=64)
    assert index.family == "ivf" and index.nprobe == 64
    assert recall_at_k(index, x, _ids(3000), 100) == 1.0


@pytest.mark.parametrize("factory", FAMILIES)
def test_mmap_load_is_read_only_and_answers_the_same(factory, tmp_path):
    x = _vectors(1000)
    ids = _ids(1000)
    index = FaissIndex.build(x, ids, factory, nprobe=8, ef_search=64)
    index.save(tmp_path)
    mapped = FaissIndex.load(tmp_path, mmap=True)
    assert mapped.read_only and mapped.count == 1000
    assert mapped.nprobe == index.nprobe and mapped.ef_search == index.ef_search
    for allowed in (None, ids[::4], ids[:20]):
        assert np.array_equal(mapped.search(x[:10], 5, allowed)[1],
                              index.search(x[:10], 5, allowed)[1])
    assert np.allclose(mapped.reconstruct(ids[:4]), x[:4], atol=1e-6)
    with pytest.raises(RuntimeError, match="read-only"):
        mapped.add(x[:1], np.array([1], dtype=np.int64))
    with pytest.raises(RuntimeError, match="read-only"):
        mapped.remove(ids[:1])


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
