"""Dense retrieval on a BEIR-format set: nDCG@10, Recall@100 and MRR@10 from exact search.

Input: the BEIR layout (Thakur et al. 2021, "BEIR: A Heterogeneous Benchmark for Zero-shot
Evaluation of Information Retrieval Models"): ``corpus.jsonl`` (``_id``, ``title``, ``text``),
``queries.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv`` (header ``query-id corpus-id
score``, tab-separated; CRLF line endings are tolerated). Only queries that have qrels are
evaluated, as in BEIR.

Choices that keep the figures comparable with published BEIR / MTEB numbers:

- documents are embedded as ``title + " " + text`` (just ``text`` when the title is empty), which
  is what BEIR's sentence-transformers wrapper does; queries as their text;
- search is exact (inner product on L2-normalised vectors, i.e. cosine), so the figure measures
  the encoder and nothing else; a caller may pass ``candidates`` instead, a search that proposes
  candidate rows (``ctxvec.index.factory.index_candidates``: a FAISS index as the pipeline
  builds one), to measure what an approximate index costs. Taking the search as a function keeps
  evaluation below the index package;
- hybrid (``evaluate_hybrid``): the dense ranking, a lexical one (BM25) and their
  reciprocal-rank fusion, all from one dense search; the lexical ranking and the fusion come
  from a ``HybridRanker`` (``ctxvec.index.hybrid.HybridCandidates``: BM25 and the fusion
  ``ctxvec query --hybrid`` uses), again so that evaluation stays below the index package;
- a hit whose doc id equals the query id is dropped before cutting at k. BEIR does this for
  ArguAna, whose queries are themselves corpus arguments; elsewhere ids never collide, so it is
  always on;
- nDCG uses the graded qrels score as the gain with a ``log2(rank + 1)`` discount and the ideal
  DCG of that query's qrels, as trec_eval / pytrec_eval do. Qrels that point at doc ids absent
  from the corpus still count in the ideal DCG and in the recall denominator (relevant documents
  that can never be found), again as pytrec_eval does; a warning says how many there are.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ctxvec.errors import DataFormatError, UserInputError
from ctxvec.model.encoder import Encoder

log = logging.getLogger(__name__)

NDCG_K = 10
RECALL_K = 100
MRR_K = 10
QUERY_BLOCK = 1024  # queries scored per matmul: (1024, N) float32 stays small for any corpus
CANDIDATE_MARGIN = 16  # extra candidates re-scored exactly before the cut at k (see _take)

# (doc vectors (N, D), query vectors (Q, D), take) -> candidate rows (Q, take), -1 when empty
CandidateSearch = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


class HybridRanker(Protocol):
    """Lexical and fused rankings made from a dense one (``ctxvec.index.hybrid``)."""

    def depth(self, k: int) -> int:
        """How deep the dense rankings must go for a fused top ``k``."""
        ...

    def __call__(self, query_texts: Sequence[str], dense: Sequence[Sequence[str]],
                 exclude: Sequence[str], k: int) -> dict[str, list[list[str]]]:
        """Per query: its text, its dense ranking (doc ids, best first, ``depth(k)`` deep) and a
        doc id never to rank (its own) -> {ranking name: per query, at most k doc ids}."""
        ...


@dataclass(frozen=True)
class BeirData:
    doc_ids: list[str]
    doc_texts: list[str]  # title + " " + text, as embedded
    query_ids: list[str]  # only queries with qrels, in queries.jsonl order
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: graded relevance}


def _read_jsonl(path: Path, fields: Sequence[str]) -> list[dict]:
    if not path.is_file():
        raise DataFormatError(f"BEIR file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataFormatError(f"{path}:{lineno}: expected a JSON object")
            for key in fields:
                if key not in row:
                    raise DataFormatError(f"{path}:{lineno}: missing field {key!r}")
            rows.append(row)
    return rows


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``query-id \\t corpus-id \\t score`` with a header line -> {qid: {docid: score}}."""
    if not path.is_file():
        raise DataFormatError(f"BEIR qrels file not found: {path}")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if lineno == 1 and fields[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue  # the header
            if len(fields) != 3:
                raise DataFormatError(
                    f"{path}:{lineno}: expected 3 tab-separated fields "
                    f"(query-id, corpus-id, score), got {len(fields)}"
                )
            qid, did, score = (x.strip() for x in fields)
            try:
                rel = int(float(score))
            except ValueError:
                raise DataFormatError(
                    f"{path}:{lineno}: score {score!r} is not a number"
                ) from None
            qrels.setdefault(qid, {})[did] = rel
    if not qrels:
        raise DataFormatError(f"{path}: no judgments")
    return qrels


def read_beir(folder: str | Path, split: str = "test") -> BeirData:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(
            f"BEIR folder not found: {folder} (expected corpus.jsonl, queries.jsonl, qrels/)"
        )
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    corpus = _read_jsonl(folder / "corpus.jsonl", ("_id", "text"))
    doc_ids = [str(d["_id"]) for d in corpus]
    if len(set(doc_ids)) != len(doc_ids):
        dup = next(i for i, n in Counter(doc_ids).items() if n > 1)
        raise DataFormatError(f"{folder / 'corpus.jsonl'}: duplicate _id {dup!r}")
    doc_texts = [_doc_text(d.get("title") or "", d["text"] or "") for d in corpus]
    queries = {
        str(q["_id"]): q["text"] or ""
        for q in _read_jsonl(folder / "queries.jsonl", ("_id", "text"))
    }
    unknown = [q for q in qrels if q not in queries]
    if unknown:
        log.warning("retrieval: %d qrels query id(s) not in queries.jsonl, skipped (e.g. %r)",
                    len(unknown), unknown[0])
    query_ids = [q for q in queries if q in qrels]
    if not query_ids:
        raise DataFormatError(f"{folder}: no query in queries.jsonl has qrels in {split}.tsv")
    known = set(doc_ids)
    absent = sum(1 for q in query_ids for d in qrels[q] if d not in known)
    if absent:
        log.warning("retrieval: %d qrels point at doc ids absent from the corpus; they count as "
                    "relevant documents that are never found", absent)
    return BeirData(
        doc_ids=doc_ids,
        doc_texts=doc_texts,
        query_ids=query_ids,
        query_texts=[queries[q] for q in query_ids],
        qrels={q: qrels[q] for q in query_ids},
    )


def _doc_text(title: str, text: str) -> str:
    return f"{title} {text}".strip() if title.strip() else text.strip()


def _rank_candidates(
    query_vecs: np.ndarray,
    doc_vecs: np.ndarray,
    candidates: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    k: int,
) -> dict[str, list[str]]:
    """Order each query's candidate rows by score (float64, recomputed here), ties by row number,
    and drop the query's own doc id. Exact and index search both end here, so given the same
    candidates they rank identically, whatever order or rounding their search produced."""
    ranked: dict[str, list[str]] = {}
    for row, qid in enumerate(query_ids):
        cand = candidates[row]
        cand = cand[cand >= 0]
        scores = doc_vecs[cand].astype(np.float64) @ query_vecs[row].astype(np.float64)
        order = np.lexsort((cand, -scores))  # score descending, then row ascending
        ranked[qid] = [doc_ids[j] for j in cand[order] if doc_ids[j] != qid][:k]
    return ranked


def _take(k: int, n_docs: int) -> int:
    # k + 1 (the query may be its own hit) + a margin, so that float32 rounding differences at
    # the cut cannot change which of the true top k + 1 are candidates.
    return min(k + 1 + CANDIDATE_MARGIN, n_docs)


def exact_search(
    query_vecs: np.ndarray,
    doc_vecs: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    k: int,
) -> dict[str, list[str]]:
    """Top-k doc ids per query by inner product, best first, skipping the doc whose id is the
    query's own (so k + 1 candidates are kept: at most one of them can be the query itself)."""
    k = min(k, len(doc_ids))
    take = _take(k, len(doc_ids))
    ranked: dict[str, list[str]] = {}
    docs_t = np.ascontiguousarray(doc_vecs.T, dtype=np.float32)  # (D, N)
    for start in range(0, len(query_ids), QUERY_BLOCK):
        block = query_vecs[start : start + QUERY_BLOCK]
        scores = block @ docs_t  # (B, N)
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]  # (B, take), unordered
        ranked |= _rank_candidates(block, doc_vecs, top, query_ids[start : start + QUERY_BLOCK],
                                   doc_ids, k)
    return ranked


def index_search(
    query_vecs: np.ndarray,
    doc_vecs: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    k: int,
    candidates: CandidateSearch,
) -> dict[str, list[str]]:
    """The same ranking over the rows ``candidates`` proposes: with an exact search it equals
    ``exact_search``; with an approximate index the difference is what it costs."""
    k = min(k, len(doc_ids))
    rows = candidates(doc_vecs, query_vecs, _take(k, len(doc_ids)))
    return _rank_candidates(query_vecs, doc_vecs, rows, query_ids, doc_ids, k)


def retrieval_metrics(
    ranked: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """nDCG@10, Recall@100 and MRR@10, averaged over the queries of ``qrels``.

    A query missing from ``ranked`` counts as retrieving nothing. Relevance is ``score > 0``;
    gains are the graded scores (trec_eval's nDCG), and a query with no relevant document scores
    0 on every metric, as in pytrec_eval.
    """
    ndcg = recall = mrr = 0.0
    for qid, judged in qrels.items():
        hits = list(ranked.get(qid, ()))
        relevant = {d: r for d, r in judged.items() if r > 0}
        dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(hits[:NDCG_K]))
        ideal = sorted(relevant.values(), reverse=True)[:NDCG_K]
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
        ndcg += dcg / idcg if idcg > 0 else 0.0
        if relevant:
            recall += len(set(hits[:RECALL_K]) & relevant.keys()) / len(relevant)
        mrr += next((1.0 / (i + 1) for i, d in enumerate(hits[:MRR_K]) if d in relevant), 0.0)
    n = len(qrels)
    if n == 0:
        raise ValueError("no queries to evaluate")
    return {
        f"ndcg@{NDCG_K}": ndcg / n,
        f"recall@{RECALL_K}": recall / n,
        f"mrr@{MRR_K}": mrr / n,
        "n_queries": n,
    }


def rank_beir(
    encoder: Encoder, data: BeirData, batch_size: int = 64, k_max: int = RECALL_K,
    candidates: CandidateSearch | None = None,
) -> dict[str, list[str]]:
    """Embed corpus and queries, then search (exact, or through ``candidates``)
    -> {query id: top-k_max doc ids}."""
    log.info("retrieval: encoding %d documents", len(data.doc_ids))
    doc_vecs = encoder.encode(data.doc_texts, batch_size=batch_size, progress=True)
    log.info("retrieval: encoding %d queries", len(data.query_ids))
    query_vecs = encoder.encode(data.query_texts, batch_size=batch_size, progress=True)
    if candidates is not None:
        return index_search(query_vecs, doc_vecs, data.query_ids, data.doc_ids, k_max,
                            candidates)
    return exact_search(query_vecs, doc_vecs, data.query_ids, data.doc_ids, k_max)


def evaluate_retrieval(
    encoder: Encoder, data: BeirData, batch_size: int = 64, k_max: int = RECALL_K,
    candidates: CandidateSearch | None = None,
) -> dict[str, float]:
    """-> {"ndcg@10", "recall@100", "mrr@10", "n_queries"} of dense retrieval (exact by
    default; ``candidates``: through that search, e.g. ``index_candidates("IVF64,Flat")``)."""
    _check_k_max(k_max)
    ranked = rank_beir(encoder, data, batch_size, k_max, candidates)
    return retrieval_metrics(ranked, data.qrels)


def evaluate_hybrid(
    encoder: Encoder, data: BeirData, hybrid: HybridRanker, batch_size: int = 64,
    k_max: int = RECALL_K, candidates: CandidateSearch | None = None,
) -> dict[str, dict[str, float]]:
    """-> {"dense": metrics, "bm25": metrics, "hybrid": metrics} (each as ``evaluate_retrieval``
    returns them) from one dense search, ``hybrid.depth(k_max)`` deep, and the rankings
    ``hybrid`` makes from it. Exact dense search (the default) ranks its top k_max as
    ``evaluate_retrieval`` does; an approximate index searched deeper may find a little more."""
    _check_k_max(k_max)
    ranked = rank_beir(encoder, data, batch_size, hybrid.depth(k_max), candidates)
    dense = [ranked.get(q, []) for q in data.query_ids]
    runs = {"dense": {q: r[:k_max] for q, r in ranked.items()}}
    for name, rankings in hybrid(data.query_texts, dense, data.query_ids, k_max).items():
        runs[name] = dict(zip(data.query_ids, rankings, strict=True))
    return {name: retrieval_metrics(r, data.qrels) for name, r in runs.items()}


def _check_k_max(k_max: int) -> None:
    if k_max < RECALL_K:
        raise UserInputError(f"k_max must be at least {RECALL_K} for recall@{RECALL_K}")
