"""One contract battery for every index backend (``ctxvec.index.base.VectorIndex``), run with the
real libraries on small random data: build, search against exact search, filters, contains and
reconstruct, count, tunables, save, load (memory-mapped where the backend maps), and the GPU
fall-back's exact copy. A new backend adds one line to ``BACKENDS`` below."""

from __future__ import annotations

import numpy as np
import pytest

from ctxvec.config import IndexConfig
from ctxvec.errors import UserInputError
from ctxvec.index import factory as index_factory
from ctxvec.index.base import VectorIndex
from ctxvec.index.factory import build_index, open_index, serve_on
from ctxvec.index.id_map import chunk_ids
from ctxvec.index.recall import recall_at_k
from ctxvec.index.torch_exact import TorchExactIndex

N_DOCS, CHUNKS, DIM = 400, 3, 32

# name -> (index config, recall@10 it must reach, reconstruct tolerance (None: approximate),
#          the tunables it has)
BACKENDS = {
    "faiss-flat": (dict(factory="Flat"), 1.0, 1e-6, set()),
    "faiss-hnsw": (dict(factory="HNSW16", ef_search=256), 0.95, 1e-6, {"ef_search"}),
    # nprobe = nlist: IVF probes every list, so it is exhaustive
    "faiss-ivf-flat": (dict(factory="IVF16,Flat", nprobe=16), 1.0, 1e-6, {"nprobe"}),
    "faiss-ivf-pq": (dict(factory="IVF16,PQ8", nprobe=16), 0.2, None, {"nprobe"}),
    "faiss-ivf-sq": (dict(factory="IVF16,SQ8", nprobe=16), 0.9, 0.02, {"nprobe"}),
    "faiss-sharded": (dict(factory="Flat", shards=3), 1.0, 1e-6, set()),
    "faiss-sharded-ivf": (dict(factory="IVF8,Flat", nprobe=8, shards=2), 1.0, 1e-6, {"nprobe"}),
    # compact codes rescored from the float vectors (int8: exact here; 32 sign bits of random
    # vectors rank coarsely: a neighbour at cosine rank 3 can be at Hamming rank 900)
    "faiss-int8": (dict(quantize="int8", rescore=200), 1.0, 0.0, {"rescore"}),
    "faiss-binary": (dict(quantize="binary", rescore=400), 0.9, 0.0, {"rescore"}),
    "faiss-binary-sharded": (dict(quantize="binary", rescore=400, shards=2), 0.9, 0.0,
                             {"rescore"}),
    "torch-exact": (dict(backend="torch-exact"), 1.0, 0.0, set()),
    "torch-exact-sharded": (dict(backend="torch-exact", shards=2), 1.0, 0.0, set()),
}


def _corpus(seed=0):
    """(vectors (N, D) L2-normalised, chunk ids, doc ids): CHUNKS chunks per document."""
    doc_ids = [f"doc-{i // CHUNKS}" for i in range(N_DOCS * CHUNKS)]
    ids = chunk_ids(doc_ids, [i % CHUNKS for i in range(len(doc_ids))])
    x = np.random.default_rng(seed).standard_normal((len(doc_ids), DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), ids, doc_ids


def _queries(n=20, seed=1):
    q = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _exact(x, ids, queries, k):
    """The reference: ids of the exact top-k by inner product, numpy only."""
    scores = queries @ x.T
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def _recall(truth, got):
    return np.mean([len(set(t) & set(g)) / len(t) for t, g in zip(truth, got, strict=True)])


@pytest.fixture(scope="module", params=list(BACKENDS))
def built(request):
    """(name, the built index, its config, vectors, ids, doc ids), one per backend."""
    settings, *_ = BACKENDS[request.param]
    cfg = IndexConfig(**settings, recall_sample=50)
    x, ids, docs = _corpus()
    index, shards = build_index(cfg, x, ids, docs)
    assert (shards is not None) == (cfg.shards > 1)
    return request.param, index, cfg, x, ids, docs


def test_build_counts_and_describes(built):
    name, index, cfg, x, ids, _ = built
    assert isinstance(index, VectorIndex)
    assert index.count == len(ids) and index.dim == DIM
    assert np.array_equal(index.live_ids(), np.sort(ids))
    described = index.describe()
    assert set(described) >= {"backend", "factory", "family", "build_device", "device"}
    assert cfg.backend in described["backend"]
    assert described["backend"].startswith("sharded") == (cfg.shards > 1)
    assert described["device"].startswith("cpu")
    assert set(index.params()) == BACKENDS[name][3]


def test_search_matches_exact_search(built):
    name, index, _, x, ids, _ = built
    queries = _queries()
    scores, got = index.search(queries, 10)
    assert scores.shape == got.shape == (20, 10)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    truth = _exact(x, ids, queries, 10)
    if BACKENDS[name][1] == 1.0:
        assert np.array_equal(got, truth)
        assert np.allclose(scores, np.sort(queries @ x.T, axis=1)[:, ::-1][:, :10], atol=1e-5)
    else:
        assert _recall(truth, got) >= BACKENDS[name][1]
    assert recall_at_k(index, x, ids, 50) >= BACKENDS[name][1]
    assert index.search(queries[:1], 10 * len(ids))[1].shape == (1, len(ids))  # k capped
    with pytest.raises(UserInputError, match="dimension"):
        index.search(np.zeros((1, DIM + 1), np.float32), 3)


@pytest.mark.parametrize("every", [3, 150])  # 400 allowed ids, and 8
def test_filters_search_only_allowed_ids(built, every):
    name, index, _, x, ids, _ = built
    queries = _queries(seed=2)
    allowed = ids[::every]
    scores, got = index.search(queries, 10, allowed)
    assert np.isin(got[got >= 0], allowed).all()
    k = min(10, len(allowed))
    truth = _exact(x[::every], allowed, queries, k)
    floor = 1.0 if BACKENDS[name][1] == 1.0 or len(allowed) < 100 else BACKENDS[name][1]
    assert _recall(truth, got[:, :k]) >= floor
    assert np.all(np.diff(scores[:, :k], axis=1) <= 1e-6)
    assert (index.search(queries[:2], 5, np.zeros(0, np.int64))[1] == -1).all()


def test_contains_and_reconstruct(built):
    name, index, _, x, ids, _ = built
    probe = np.concatenate([ids[[5, 700, 1]], [123, -7]])
    assert index.contains(probe).tolist() == [True, True, True, False, False]
    rows = np.array([3, 900, 17])
    got = index.reconstruct(ids[rows])
    assert got.shape == (3, DIM) and got.dtype == np.float32
    tolerance = BACKENDS[name][2]
    if tolerance is not None:
        assert np.allclose(got, x[rows], atol=tolerance)
    with pytest.raises(KeyError):
        index.reconstruct(np.array([123]))


def test_tunables_are_set_by_name_and_unknown_ones_ignored(built):
    name, index, _, _, _, _ = built
    before = index.params()
    index.set_params(nprobe=4, ef_search=64, rescore=30, unknown=3)
    expected = {"nprobe": 4, "ef_search": 64, "rescore": 30}
    assert index.params() == {k: expected[k] for k in before}
    index.set_params(**before)
    assert index.params() == before


@pytest.mark.parametrize("mmap", [False, True])
def test_save_and_open_answer_the_same(built, mmap, tmp_path):
    name, index, cfg, x, ids, _ = built
    index.save(tmp_path)
    manifest = {"factory": index.describe()["factory"]}
    loaded = open_index(tmp_path, manifest, IndexConfig(mmap=mmap))
    assert type(loaded) is type(index)
    assert loaded.count == index.count and loaded.dim == DIM
    assert loaded.params() == index.params()
    assert loaded.describe()["factory"] == index.describe()["factory"]
    assert np.array_equal(loaded.live_ids(), index.live_ids())
    queries = _queries(seed=3)
    for allowed in (None, ids[::4], ids[:20]):
        s1, i1 = index.search(queries, 10, allowed)
        s2, i2 = loaded.search(queries, 10, allowed)
        assert np.array_equal(i1, i2)
        assert np.allclose(s1, s2, atol=1e-6)
    assert np.array_equal(loaded.reconstruct(ids[:4]), index.reconstruct(ids[:4]))


def test_the_gpu_fallback_copy_answers_as_exact_search(built):
    """What ``serve_on`` searches with on a GPU that faiss cannot use, here on the CPU."""
    name, index, _, x, ids, _ = built
    assert serve_on(index, "cpu") is index
    exact = TorchExactIndex.from_index(index, "cpu")
    assert exact.count == index.count and exact.describe()["device"] == "cpu (exact, torch)"
    queries = _queries(seed=4)
    if BACKENDS[name][2] is not None:  # the stored vectors are the originals (or close)
        assert _recall(_exact(x, ids, queries, 10), exact.search(queries, 10)[1]) >= 0.95


def test_every_backend_in_the_config_is_registered_and_tested():
    declared = set(IndexConfig.model_fields["backend"].annotation.__args__)
    assert declared == set(index_factory.BACKENDS)
    assert declared == {BACKENDS[name][0].get("backend", "faiss") for name in BACKENDS}


def test_open_index_says_what_a_folder_lacks(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index in"):
        open_index(tmp_path)
