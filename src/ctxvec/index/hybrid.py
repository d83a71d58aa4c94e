"""Hybrid retrieval over a corpus of whole documents, for ``ctxvec eval retrieval --hybrid``.

The fusion is the one ``ctxvec query --hybrid`` serves (``Searcher._hybrid``): BM25 from
``ctxvec.index.bm25``, reciprocal-rank fusion and its depth from ``ctxvec.index.fusion``, the
constant ``query.rrf_k``. What differs is the unit: evaluation ranks the documents of a BEIR
corpus as they are (one BM25 entry and one vector per document), the query path ranks chunks
and folds them into documents.

``HybridCandidates`` is the ``HybridRanker`` that ``ctxvec.evaluate.retrieval.evaluate_hybrid``
takes: it lives here, above evaluation, so that evaluation never imports the index package.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ctxvec.index.bm25 import BM25Index
from ctxvec.index.fusion import fusion_depth, reciprocal_rank_fusion

log = logging.getLogger(__name__)


class HybridCandidates:
    """BM25 over ``doc_texts`` (row i is ``doc_ids[i]``) and its fusion with a dense ranking."""

    def __init__(self, doc_ids: Sequence[str], doc_texts: Sequence[str], rrf_k: int = 60):
        if rrf_k < 1:
            raise ValueError(f"rrf k must be at least 1, got {rrf_k}")
        self.doc_ids = list(doc_ids)
        self.rrf_k = rrf_k
        self.bm25 = BM25Index.build(doc_texts, np.arange(len(self.doc_ids), dtype=np.int64))

    def depth(self, k: int) -> int:
        return fusion_depth(k)

    def lexical(self, text: str, depth: int, exclude: str | None = None) -> list[str]:
        """BM25's ranking of the corpus for ``text``: at most ``depth`` doc ids, best first,
        only documents sharing a word with it, ``exclude`` left out."""
        _, rows = self.bm25.search(text, depth + 1)
        return [d for d in (self.doc_ids[r] for r in rows) if d != exclude][:depth]

    def __call__(self, query_texts: Sequence[str], dense: Sequence[Sequence[str]],
                 exclude: Sequence[str], k: int) -> dict[str, list[list[str]]]:
        """-> {"bm25": BM25's top k, "hybrid": the fused top k}, one doc id list per query."""
        depth = fusion_depth(k)
        lexical: list[list[str]] = []
        hybrid: list[list[str]] = []
        for text, ranked, own in zip(query_texts, dense, exclude, strict=True):
            words = self.lexical(text, depth, own)
            fused = reciprocal_rank_fusion([list(ranked[:depth]), words], self.rrf_k)[:k]
            lexical.append(words[:k])
            hybrid.append([str(d) for d, _ in fused])
        log.info("retrieval: BM25 and fused rankings of %d queries (rrf k %d, depth %d)",
                 len(lexical), self.rrf_k, depth)
        return {"bm25": lexical, "hybrid": hybrid}
