"""Contract tests of ``ShardedIndex`` (index.shards > 1) against one ``FaissIndex`` over all the
vectors: exact shards merged by score must answer exactly what one exact index answers, with
and without filters, after a save and a load, and through the GPU fall-back (torch exact)."""

from __future__ import annotations

import numpy as np
import pytest

from ctxvec.config import IndexConfig
from ctxvec.errors import UserInputError
from ctxvec.index.factory import build_index, open_index
from ctxvec.index.faiss_index import FaissIndex
from ctxvec.index.id_map import chunk_ids
from ctxvec.index.recall import recall_at_k
from ctxvec.index.sharded import SHARDS_DIR, SHARDS_FILE, ShardedIndex, merge_topk, shard_of
from ctxvec.index.torch_exact import TorchExactIndex


def _corpus(n_docs=400, chunks=3, d=32, seed=0):
    """(vectors, ids, doc_ids): ``chunks`` chunks per document, L2-normalised."""
    doc_ids = [f"doc-{i // chunks}" for i in range(n_docs * chunks)]
    ids = chunk_ids(doc_ids, [i % chunks for i in range(len(doc_ids))])
    x = np.random.default_rng(seed).standard_normal((len(doc_ids), d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), ids, doc_ids


@pytest.fixture(scope="module")
def pair():
    """(one Flat index, the same vectors in 3 Flat shards, vectors, ids, doc_ids)."""
    x, ids, docs = _corpus()
    single = FaissIndex.build(x, ids, "Flat")
    sharded, info = build_index(IndexConfig(factory="Flat", shards=3, recall_sample=50),
                                x, ids, docs)
    return single, sharded, info, x, ids, docs


def test_shard_of_is_stable_keeps_documents_whole_and_balances():
    docs = [f"doc-{i}" for i in range(3000)]
    a, b = shard_of(docs, 4), shard_of(list(docs), 4)
    assert np.array_equal(a, b) and a.min() == 0 and a.max() == 3
    assert shard_of(["doc-7"], 4)[0] == a[7]  # depends on the document alone
    counts = np.bincount(a, minlength=4)
    assert counts.min() > 0.8 * 750 and counts.max() < 1.2 * 750
    # a hash of doc_id, not of the chunk ids: every chunk of a document in one shard
    x, ids, docs = _corpus(50)
    _, sharded_info = build_index(IndexConfig(factory="Flat", shards=2), x, ids, docs)
    assert sum(s["count"] for s in sharded_info) == len(ids)


def test_sharded_flat_answers_exactly_as_one_flat(pair):
    single, sharded, info, x, ids, _ = pair
    assert [s["count"] for s in info] == [s.count for s in sharded.shards]
    assert len(info) == 3 and all(s.count > 0 for s in sharded.shards)
    assert sharded.count == single.count == len(ids) and sharded.dim == 32
    assert sharded.describe()["factory"] == "Flat" and all(s["recall_at_10"] == 1.0 for s in info)
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((12, 32)).astype(np.float32)
    for k in (1, 10, 57):
        s1, i1 = single.search(queries, k)
        s2, i2 = sharded.search(queries, k)
        assert np.array_equal(i1, i2), k
        assert np.array_equal(s1, s2)  # the same scores, bit for bit
    # ids are unique across shards, and the union is every id
    assert np.array_equal(sharded.live_ids(), np.sort(ids))
    assert recall_at_k(sharded, x, ids, 100) == 1.0


def test_filters_contains_and_reconstruct_match_one_flat(pair):
    single, sharded, _, x, ids, docs = pair
    q = x[:5] + 0.1
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rng = np.random.default_rng(2)
    for allowed in (rng.choice(ids, 40, replace=False),  # a few ids in every shard
                    ids[np.flatnonzero(shard_of(docs, 3) == 1)][:30],  # one shard only
                    rng.choice(ids, 900, replace=False)):
        s1, i1 = single.search(q, 10, allowed)
        s2, i2 = sharded.search(q, 10, allowed)
        assert np.array_equal(i1, i2) and np.array_equal(s1, s2)
        assert set(i2[i2 >= 0].ravel()) <= set(allowed)
    assert np.array_equal(sharded.search(q, 5, np.array([], np.int64))[1], np.full((5, 5), -1))
    probe = np.concatenate([ids[:5], [123, 456]])
    assert sharded.contains(probe).tolist() == [True] * 5 + [False, False]
    assert np.array_equal(sharded.reconstruct(ids[[3, 900, 17]]), x[[3, 900, 17]])
    with pytest.raises(KeyError):
        sharded.reconstruct(np.array([123]))


def test_save_load_roundtrip(pair, tmp_path):
    single, sharded, _, x, ids, _ = pair
    sharded.save(tmp_path)
    assert (tmp_path / SHARDS_FILE).is_file()
    assert sorted(p.name for p in (tmp_path / SHARDS_DIR).iterdir()) == ["0", "1", "2"]
    assert all((tmp_path / SHARDS_DIR / k / "index.faiss").is_file() for k in "012")
    for mmap in (False, True):
        loaded = open_index(tmp_path, {"factory": "Flat"}, IndexConfig(mmap=mmap))
        assert isinstance(loaded, ShardedIndex)
        assert [s.count for s in loaded.shards] == [s.count for s in sharded.shards]
        assert np.array_equal(loaded.search(x[:7], 10)[1], single.search(x[:7], 10)[1])
    (tmp_path / "one").mkdir()
    single.save(tmp_path / "one")
    assert isinstance(open_index(tmp_path / "one", {"factory": "Flat"}), FaissIndex)


def test_torch_exact_over_shards_matches(pair):
    """What the Searcher falls back to on a GPU without faiss-gpu, here on the CPU."""
    single, sharded, _, x, _, _ = pair
    exact = TorchExactIndex.from_index(sharded, "cpu")
    assert exact.count == single.count
    assert np.array_equal(exact.search(x[:6], 8)[1], single.search(x[:6], 8)[1])


def test_ivf_shards_resolve_auto_per_shard_and_keep_recall():
    x, ids, docs = _corpus(1500, 2)
    cfg = IndexConfig(factory="auto", auto_exact_max=1000, shards=2, nprobe=16,
                      recall_sample=100)
    sharded, info = build_index(cfg, x, ids, docs)
    assert all(s["factory"].startswith("IVF") and s["factory"].endswith(",Flat") for s in info)
    assert sharded.describe()["family"] == "ivf" and sharded.params() == {"nprobe": 16}
    assert recall_at_k(sharded, x, ids, 100) >= 0.9
    assert all(s["build_device"] == "cpu" for s in info)  # faiss-cpu: no GPU build


def test_too_many_shards_for_the_documents_is_a_clear_error():
    x, ids, docs = _corpus(2)
    with pytest.raises(UserInputError, match="use fewer shards"):
        build_index(IndexConfig(factory="Flat", shards=8), x, ids, docs)


def test_merge_pads_and_puts_empty_slots_last():
    neg = -np.finfo(np.float32).max
    s, i = merge_topk([np.array([[0.9, neg]], np.float32), np.array([[0.95]], np.float32)],
                      [np.array([[5, -1]]), np.array([[7]])], 4)
    assert i.tolist() == [[7, 5, -1, -1]] and s[0, :2].tolist() == pytest.approx([0.95, 0.9])
