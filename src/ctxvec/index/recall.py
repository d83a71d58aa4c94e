"""How good an approximate index is: recall@k against exact search, on its own stored vectors.

Every index folder's manifest carries this figure (``recall_at_10``), measured with the search
parameters the index serves with, so the recall a manifest claims is the recall served. Exact
search here is faiss' ``IndexFlatIP`` (BLAS), whatever backend is measured.
"""

from __future__ import annotations

import numpy as np

from ctxvec.index.base import VectorIndex
from ctxvec.index.faiss_lib import faiss


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-k by inner product: the reference recall is measured against."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_at_k(index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, n: int,
                k: int = 10) -> float:
    """Recall@k of ``index`` against exact search, with ``n`` stored vectors as queries."""
    if len(vectors) == 0:
        return 1.0
    rng = np.random.default_rng(0)
    rows = rng.choice(len(vectors), min(n, len(vectors)), replace=False)
    queries = vectors[rows]
    k = min(k, len(vectors))
    truth = ids[exact_search(vectors, queries, k)]  # (Q, k) ids
    got = index.search(queries, k)[1]
    hits = sum(len(set(t) & set(g)) for t, g in zip(truth, got, strict=True))
    return hits / truth.size
