"""FAISS behind one small interface: build from a factory string, search, save, load.

Vectors are L2-normalised, so inner product is cosine similarity. Ids are int64 row numbers of the
embeddings table; the folder's ``ids.parquet`` maps them back to doc ids and chunk offsets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from ctxvec.errors import UserInputError

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"


class VectorIndex(Protocol):
    @property
    def count(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, folder: Path) -> None: ...


class FaissIndex:
    """A FAISS index with explicit int64 ids, inner-product metric."""

    def __init__(self, index: faiss.Index, factory: str):
        self.index = index
        self.factory = factory

    @classmethod
    def build(
        cls, vectors: np.ndarray, ids: np.ndarray, factory: str = "Flat", train_size: int = 100_000
    ) -> FaissIndex:
        """vectors (N, D) float32, ids (N,) int64 -> a trained, filled index."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"vectors {vectors.shape} and ids {ids.shape} do not line up")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate ids: every vector needs its own id")
        dim = vectors.shape[1]
        try:
            base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise UserInputError(
                f"invalid FAISS factory string (index.factory) {factory!r}: {e}"
            ) from None
        # Flat and HNSW keep no ids of their own; IDMap2 adds them (and reconstruct by id).
        index = base if _supports_ids(base) else faiss.IndexIDMap2(base)
        if not index.is_trained:
            n_train = min(len(vectors), train_size)
            rng = np.random.default_rng(0)
            sample = vectors[rng.choice(len(vectors), n_train, replace=False)]
            log.info("index: training %s on %d vectors", factory, n_train)
            index.train(sample)
        index.add_with_ids(vectors, ids)
        return cls(index, factory)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) -> (scores (Q, k), ids (Q, k)); missing slots have id -1."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise UserInputError(
                f"query dimension {queries.shape[1]} != index dimension {self.dim}"
            )
        k = max(1, min(k, self.count))
        return self.index.search(queries, k)

    def save(self, folder: Path) -> None:
        faiss.write_index(self.index, str(folder / INDEX_FILE))

    @classmethod
    def load(cls, folder: Path, factory: str, mmap: bool = False) -> FaissIndex:
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        return cls(faiss.read_index(str(folder / INDEX_FILE), flags), factory)


def _supports_ids(index: faiss.Index) -> bool:
    return faiss.try_extract_index_ivf(index) is not None


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-k by inner product: the reference recall is measured against."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_at_k(index: FaissIndex, vectors: np.ndarray, ids: np.ndarray, n: int, k: int = 10):
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
