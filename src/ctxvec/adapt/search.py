"""The two retrievers mining asks: BM25 over the mined documents and the starting encoder's exact
dense search over them, both answering a whole batch of queries at once.

BM25 is ``ctxvec.index.bm25`` (bm25s, its tokenizer and scoring, the index the pipeline builds
for hybrid search), queried through bm25s' batched ``retrieve``; dense search is an exact
inner product on L2-normalised vectors in blocks of queries, so no index approximation decides
what counts as a hard negative. Rows are document positions; -1 marks no hit (a query sharing no
term with any document, or fewer documents than asked).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from ctxvec.index.bm25 import BM25Index, tokenize
from ctxvec.model.encoder import Encoder

log = logging.getLogger(__name__)

QUERY_BLOCK = 1024  # queries per BM25 call and per dense matmul: bounded memory at any size


@dataclass
class DocSearch:
    bm25: BM25Index
    encoder: Encoder | None = None
    doc_vecs: np.ndarray | None = None  # (N, D) float32, L2-normalised
    batch_size: int = 64
    # text -> vector: a pseudo-query is encoded for the filter, then again as an anchor
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, texts: Sequence[str], encoder: Encoder | None = None,
              batch_size: int = 64) -> DocSearch:
        bm25 = BM25Index.build(texts, np.arange(len(texts), dtype=np.int64))
        vecs = None
        if encoder is not None:
            log.info("mine: encoding %d documents", len(texts))
            vecs = encoder.encode(list(texts), batch_size=batch_size, progress=True)
        return cls(bm25, encoder, vecs, batch_size)

    @property
    def n_docs(self) -> int:
        return self.bm25.count

    def bm25_top(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (rows (Q, k), scores (Q, k)), best first; -1 / 0 where there is no match."""
        k = min(k, self.n_docs)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.zeros((len(queries), k), dtype=np.float32)
        vocab = self.bm25.retriever.vocab_dict
        bar = tqdm(total=len(queries), desc="bm25", unit="query", leave=False,
                   disable=len(queries) < QUERY_BLOCK)
        for start in range(0, len(queries), QUERY_BLOCK):
            toks = tokenize(queries[start : start + QUERY_BLOCK])
            toks = [[t for t in q if t in vocab] for q in toks]
            live = [i for i, q in enumerate(toks) if q]
            if live and k:
                res = self.bm25.retriever.retrieve([toks[i] for i in live], k=k,
                                                   show_progress=False)
                r, s = np.asarray(res.documents), np.asarray(res.scores, dtype=np.float32)
                r = np.where(s > 0, r, -1)  # a score of 0 is no match, not a weak one
                rows[start + np.asarray(live)] = r
                scores[start + np.asarray(live)] = np.where(s > 0, s, 0)
            bar.update(len(toks))
        bar.close()
        return rows, scores

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts``; each distinct text is encoded once per search."""
        assert self.encoder is not None, "dense search needs the encoder"
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            vecs = self.encoder.encode(todo, batch_size=self.batch_size,
                                       progress=len(todo) >= QUERY_BLOCK)
            self._cache.update(zip(todo, vecs, strict=True))
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def dense_top(self, query_vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (rows (Q, k), cosine scores (Q, k)), best first, by exact inner product."""
        assert self.doc_vecs is not None, "dense search needs the document vectors"
        k = min(k, self.n_docs)
        rows = np.empty((len(query_vecs), k), dtype=np.int64)
        scores = np.empty((len(query_vecs), k), dtype=np.float32)
        docs_t = np.ascontiguousarray(self.doc_vecs.T)
        for start in range(0, len(query_vecs), QUERY_BLOCK):
            s = query_vecs[start : start + QUERY_BLOCK] @ docs_t
            top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else (
                np.tile(np.arange(s.shape[1]), (len(s), 1)))
            top_s = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            rows[start : start + len(s)] = np.take_along_axis(top, order, axis=1)
            scores[start : start + len(s)] = np.take_along_axis(top_s, order, axis=1)
        return rows, scores

    def term_weights(self) -> sparse.csr_matrix:
        """(documents, vocabulary) BM25 weight of each term in each document: bm25s stores the
        scores by term; transposed here, a document's row is its terms by weight."""
        sc = self.bm25.retriever.scores
        n_terms = len(sc["indptr"]) - 1
        m = sparse.csc_matrix((sc["data"], sc["indices"], sc["indptr"]),
                              shape=(self.n_docs, n_terms))
        return m.tocsr()

    def vocabulary(self) -> list[str]:
        """Term id -> term, for ``term_weights``'s columns."""
        inv = [""] * len(self.bm25.retriever.vocab_dict)
        for term, i in self.bm25.retriever.vocab_dict.items():
            inv[i] = term
        return inv
