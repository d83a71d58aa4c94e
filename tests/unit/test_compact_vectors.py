"""Compact vectors: int8 and binary codes rescored from the float vectors on disk
(``index.quantize``, ``index.rescore``), and Matryoshka-style truncation (``embed.dim``) through
embed, index and the query path. Real FAISS, a real (tiny) encoder, small random data."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from ctxvec.artifacts import Embeddings
from ctxvec.config import EmbedConfig, IndexConfig
from ctxvec.embed.corpus import read_vectors, run_embed
from ctxvec.embed.truncate import DimensionMismatchError, query_dim, truncate
from ctxvec.index import compact
from ctxvec.index.build import run_index
from ctxvec.index.compact import CompactIndex
from ctxvec.index.factory import build_index, open_index
from ctxvec.index.faiss_index import FaissIndex
from ctxvec.index.faiss_lib import faiss
from ctxvec.index.id_map import chunk_ids
from ctxvec.model.encoder import Encoder
from ctxvec.serve.search import Searcher
from tests.unit.test_embed import _cfg, snapshot, tiny_dir  # noqa: F401  (fixtures)

N, DIM = 600, 48


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((15, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = chunk_ids([f"d{i // 2}" for i in range(N)], np.arange(N) % 2)
    return x, ids, q


def _exact(x, ids, q, k):
    scores = q @ x.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


@pytest.mark.parametrize("quantize", ["int8", "binary"])
def test_rescoring_every_candidate_is_exact_search(quantize, tmp_path):
    """With as many candidates as vectors the codes only choose the order of reading: the answer
    is exact search's, scores included, before and after a round trip through disk."""
    x, ids, q = _data()
    index, _ = build_index(IndexConfig(quantize=quantize, rescore=N), x, ids)
    truth_scores, truth_ids = _exact(x, ids, q, 10)
    scores, got = index.search(q, 10)
    assert np.array_equal(got, truth_ids)
    assert np.allclose(scores, truth_scores, atol=1e-5)
    index.save(tmp_path)
    loaded = open_index(tmp_path)
    assert isinstance(loaded, CompactIndex) and isinstance(loaded.vectors, np.memmap)
    assert np.array_equal(loaded.search(q, 10)[1], truth_ids)


def test_int8_codes_with_a_few_candidates_find_the_exact_top_k():
    x, ids, q = _data(1)
    index = CompactIndex.build(x, ids, "int8", rescore=40)
    assert np.array_equal(index.search(q, 10)[1], _exact(x, ids, q, 10)[1])


def test_binary_candidates_widen_with_rescore():
    x, ids, q = _data(2)
    index = CompactIndex.build(x, ids, "binary", rescore=10)
    truth = _exact(x, ids, q, 10)[1]
    hits = []
    for r in (10, 100, 300):
        index.set_params(rescore=r)
        got = index.search(q, 10)[1]
        hits.append(np.mean([len(set(a) & set(b)) for a, b in zip(got, truth, strict=True)]))
    assert hits[0] <= hits[1] <= hits[2] and hits[2] > hits[0]


def test_compact_codes_take_less_memory_than_the_float_index():
    """The serialised indexes (what a process holds once read): int8 about 4x, binary about
    32x smaller than the float Flat index of the same vectors."""
    x, ids, _ = _data()
    flat_index = FaissIndex.build(x, ids, "Flat")  # held: its inner index belongs to it
    flat = len(faiss.serialize_index(flat_index.index)) - ids.nbytes  # ids aside
    int8 = len(faiss.serialize_index(CompactIndex.build(x, ids, "int8").codes))
    binary = len(faiss.serialize_index_binary(CompactIndex.build(x, ids, "binary").codes))
    assert 3.5 * int8 < flat and 20 * binary < flat


def test_opened_compact_index_keeps_only_codes_and_ids_in_memory(tmp_path):
    x, ids, _ = _data()
    for quantize, per_vector in (("int8", DIM), ("binary", DIM // 8)):
        (tmp_path / quantize).mkdir()
        CompactIndex.build(x, ids, quantize).save(tmp_path / quantize)
        loaded = open_index(tmp_path / quantize)
        assert loaded.memory_bytes() == N * (per_vector + 24) < x.nbytes
        assert np.array_equal(loaded.reconstruct(ids[:3]), x[:3])  # the floats, not the codes


def test_a_large_filter_goes_through_the_codes_and_stays_within_it(monkeypatch):
    monkeypatch.setattr(compact, "EXACT_SUBSET_MAX", 0)  # no exact-subset shortcut
    x, ids, q = _data(3)
    allowed = ids[::3]
    for quantize in ("int8", "binary"):
        index = CompactIndex.build(x, ids, quantize, rescore=N)
        scores, got = index.search(q, 10, allowed)
        assert np.isin(got, allowed).all()
        assert np.array_equal(got, _exact(x[::3], allowed, q, 10)[1])


def test_concurrent_searches_agree():
    x, ids, q = _data()
    index = CompactIndex.build(x, ids, "binary", rescore=100)
    want = index.search(q, 5)[1]
    out = []
    threads = [threading.Thread(target=lambda: out.append(index.search(q, 5)[1]))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(o, want) for o in out)


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"quantize": "int4"}, {"quantize": "binary", "rescore": 0},
    {"quantize": "int8", "backend": "torch-exact"}, {"quantize": "binary", "factory": "HNSW32"},
])
def test_bad_index_settings_are_refused(fields):
    with pytest.raises(ValidationError):
        IndexConfig(**fields)


def test_bad_embed_dim_is_refused():
    with pytest.raises(ValidationError):
        EmbedConfig(dim=4)
    assert IndexConfig(quantize="int8", factory="Flat").quantize == "int8"


# --- truncation -----------------------------------------------------------------------------


def test_truncate_keeps_the_first_components_and_renormalises():
    x, _, _ = _data()
    cut = truncate(x, 16)
    assert cut.shape == (N, 16)
    assert np.allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)
    assert np.allclose(cut, x[:, :16] / np.linalg.norm(x[:, :16], axis=1, keepdims=True))
    assert truncate(x, None) is x or np.array_equal(truncate(x, None), x)
    assert np.array_equal(truncate(x, DIM + 5), x)
    assert np.array_equal(truncate(np.zeros((1, 8)), 4), np.zeros((1, 4)))


def test_query_dim_follows_the_index_and_refuses_another_recipe():
    assert query_dim(384, 384, None, "index") is None
    assert query_dim(128, 384, None, "index") == 128
    assert query_dim(128, 384, 128, "index") == 128
    with pytest.raises(DimensionMismatchError, match="embed.dim: 128"):
        query_dim(128, 384, 256, "index v3")
    with pytest.raises(DimensionMismatchError, match="full 384"):
        query_dim(384, 384, 128, "index v3") if False else query_dim(128, 384, 384, "index v3")
    with pytest.raises(DimensionMismatchError, match="another model"):
        query_dim(768, 384, None, "index v3")


def test_embed_dim_truncates_the_stored_vectors_and_records_it(workspace, snapshot, tiny_dir):  # noqa: F811
    full = run_embed(_cfg(), workspace, snapshot, str(tiny_dir), "1")
    cut = run_embed(_cfg("embed.dim=16"), workspace, snapshot, str(tiny_dir), "2")
    vf, _ = read_vectors(full.path)
    vc, _ = read_vectors(cut.path)
    assert vf.shape[1] == 32 and vc.shape[1] == 16 == cut.dim
    assert np.allclose(vc, truncate(vf, 16), atol=1e-6)
    manifest = json.loads((Path(cut.path) / "manifest.json").read_text())
    assert (manifest["dim"], manifest["model_dim"]) == (16, 32)
    # an index over them, with a recipe asking for another dimension: refused, nothing written
    with pytest.raises(DimensionMismatchError, match="16-dimensional"):
        run_index(_cfg("embed.dim=8"), workspace, Embeddings(cut.path, cut.rows, cut.docs, 16,
                                                              "2"))
    assert not (workspace.indexes / "v2").exists()


def test_the_query_path_truncates_as_the_corpus_was(tiny_dir):  # noqa: F811
    """Searcher.embed and a raw full-size vector are cut to the index's dimension."""
    encoder = Encoder.load(tiny_dir, device="cpu", precision="fp32")
    x, ids, _ = _data()
    searcher = Searcher.__new__(Searcher)  # the query path alone, without a registry
    searcher.encoder, searcher._tokenizer_lock = encoder, threading.Lock()
    searcher.query_dim = query_dim(16, encoder.dim, None, "index")
    searcher.stored = CompactIndex.build(truncate(x, 16), ids, "int8")
    searcher.version = "1"
    texts = ["the cat sat on the mat", "a dog ran"]
    got = searcher.embed(texts)
    assert got.shape == (2, 16)
    assert np.allclose(got, truncate(encoder.encode(texts), 16), atol=1e-5)
    full = encoder.encode(texts[:1])[0]
    assert np.allclose(searcher._as_query(full), got[0], atol=1e-5)
    assert np.allclose(searcher._as_query(got[0]), got[0], atol=1e-6)
