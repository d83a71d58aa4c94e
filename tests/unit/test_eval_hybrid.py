"""Hybrid retrieval evaluation: BM25 + dense fused by reciprocal rank, as the query path fuses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ctxvec.evaluate.retrieval import BeirData, evaluate_hybrid, evaluate_retrieval, read_beir
from ctxvec.index.bm25 import BM25Index
from ctxvec.index.fusion import fusion_depth
from ctxvec.index.hybrid import HybridCandidates
from ctxvec.serve.search import Searcher

# BM25 finds q1's document by its rare words, which the dense model ranks last; q2's document
# shares no word with q2 (dense finds it), but BM25 matches another one by "markets".
DOCS = {
    "d1": "The Zanzibar treaty was signed in 1890.",
    "d2": "Ships sail across the open ocean.",
    "d3": "Gardens bloom with flowers each spring.",
    "d4": "Markets trade goods between distant cities.",
}
QUERIES = {"q1": "zanzibar treaty", "q2": "blossoming plants sold at markets"}
QRELS = {"q1": {"d1": 1}, "q2": {"d3": 1}}
# the dense model: each document on its own axis; q1 ranks d2 > d3 > d4 > d1, q2 d3 > d4 > d2 > d1
VECTORS = {DOCS[f"d{i + 1}"]: np.eye(4)[i] for i in range(4)}
VECTORS[QUERIES["q1"]] = np.array([0.1, 0.4, 0.3, 0.2])
VECTORS[QUERIES["q2"]] = np.array([0.1, 0.2, 0.4, 0.3])


class TableEncoder:
    """A dense 'model' that looks each text's vector up in a table."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def encode(self, texts, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        vecs = np.stack([self.table[t] for t in texts]).astype(np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def write_beir(folder: Path, docs=DOCS, queries=QUERIES, qrels=QRELS) -> Path:
    """A BEIR-format folder: corpus.jsonl, queries.jsonl, qrels/test.tsv."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in docs.items()))
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{r}\n" for q, judged in qrels.items() for d, r in judged.items()))
    return folder


@pytest.fixture()
def beir(tmp_path) -> BeirData:
    return read_beir(write_beir(tmp_path / "beir"))


def test_hybrid_finds_what_bm25_finds_and_dense_misses(beir):
    ranker = HybridCandidates(beir.doc_ids, beir.doc_texts, rrf_k=60)
    runs = evaluate_hybrid(TableEncoder(VECTORS), beir, ranker)
    assert set(runs) == {"dense", "bm25", "hybrid"}
    # by hand: rank r of the relevant document gives nDCG 1 / log2(r + 1) and MRR 1 / r
    # dense: q1's d1 at 4, q2's d3 at 1
    assert runs["dense"]["ndcg@10"] == pytest.approx((1 / math.log2(5) + 1) / 2)
    assert runs["dense"]["mrr@10"] == pytest.approx((1 / 4 + 1) / 2)
    # BM25: q1's d1 at 1 (the only match); q2 matches d4 alone, d3 never
    assert runs["bm25"]["ndcg@10"] == pytest.approx((1 + 0) / 2)
    assert runs["bm25"]["recall@100"] == pytest.approx(0.5)
    # fused, k = 60: q1: d1 1/64 + 1/61 beats d2 1/61 -> d1 at 1;
    # q2: d4 1/62 + 1/61 beats d3 1/61 -> d3 at 2
    assert runs["hybrid"]["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert runs["hybrid"]["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert runs["hybrid"]["recall@100"] == pytest.approx(1.0)
    assert all(m["n_queries"] == 2 for m in runs.values())
    # the dense figures are those of the plain evaluation
    assert runs["dense"] == evaluate_retrieval(TableEncoder(VECTORS), beir)


def test_rankings_leave_out_the_query_s_own_document():
    """ArguAna's queries are corpus documents: dropped from BM25 before fusing, as from dense."""
    docs = {"q1": "zanzibar treaty", **DOCS}
    ranker = HybridCandidates(list(docs), list(docs.values()), rrf_k=60)
    assert ranker.lexical("zanzibar treaty", 10) == ["q1", "d1"]
    runs = ranker(["zanzibar treaty"], [["d2", "d3", "d4", "d1"]], ["q1"], k=100)
    assert runs == {"bm25": [["d1"]], "hybrid": [["d1", "d2", "d3", "d4"]]}
    with pytest.raises(ValueError, match="at least 1"):
        HybridCandidates(list(docs), list(docs.values()), rrf_k=0)


def _query_path(doc_ids: list[str], texts: list[str], dense: list[str], rrf_k: int):
    """``Searcher._hybrid`` over one chunk per document (chunk id = row), with the dense index
    answering ``dense`` and the served hits left as (doc id, fused score, chunk)."""
    row = {d: i for i, d in enumerate(doc_ids)}

    class Ranked:  # the dense index: a fixed ranking, scores decreasing
        def search(self, vec, k, allowed=None):
            ids = np.array([[row[d] for d in dense[:k]]], dtype=np.int64)
            return -np.arange(ids.shape[1], dtype=np.float32)[None], ids

    s = Searcher.__new__(Searcher)
    s.index, s.rrf_k, s.version = Ranked(), rrf_k, "1"
    s.bm25 = BM25Index.build(texts, np.arange(len(texts), dtype=np.int64))
    s.id_map = SimpleNamespace(rows=lambda ids: np.asarray(ids), doc_ids=np.array(doc_ids))
    s._hits = lambda ranked, docs=None: ranked
    return s._hybrid


@pytest.mark.parametrize("rrf_k", [1, 60])
def test_fusion_is_the_query_path_s_on_the_same_rankings(rrf_k):
    rng = np.random.default_rng(0)
    words = ["river", "bank", "money", "boat", "treaty", "ocean", "garden", "city", "trade"]
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 6))) for _ in range(150)]
    doc_ids = [f"doc{i}" for i in range(len(texts))]
    dense = [doc_ids[i] for i in rng.permutation(len(doc_ids))]
    ranker = HybridCandidates(doc_ids, texts, rrf_k)
    for query, k in [("river bank", 10), ("money treaty ocean", 5), ("trade", 40)]:
        served = _query_path(doc_ids, texts, dense, rrf_k)(query, np.zeros((1, 4)), k, None)
        evaluated = ranker([query], [dense[:fusion_depth(k)]], [""], k)["hybrid"][0]
        assert evaluated == [d for d, _, _ in served]
        assert len(evaluated) == k and evaluated != dense[:k]  # the fusion reordered
