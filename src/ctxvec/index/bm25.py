"""BM25 over chunk texts (the ``bm25s`` library), for hybrid search next to the dense index.

Why BM25 at all: a dense encoder, especially a small one trained on little data, misses exact
rare words (names, numbers, codes) that a lexical index finds at once; fusing both rankings
(``ctxvec.index.fusion``) keeps the strengths of each. The unit is the chunk, with the same int64
ids as the FAISS index, so both rankings speak of the same things and filters apply alike.

Text is lower-cased, split into words of two or more word characters and stripped of English
stopwords (bm25s' tokenizer); no stemming, so nothing beyond bm25s itself is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np

log = logging.getLogger(__name__)

BM25_DIR = "bm25"
IDS_FILE = "ids.npy"


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


class BM25Index:
    """A BM25 index whose documents are chunks; read-only after build, safe to share by threads
    (a search only reads the score matrix)."""

    def __init__(self, retriever: bm25s.BM25, ids: np.ndarray):
        self.retriever = retriever
        self.ids = np.asarray(ids, dtype=np.int64)  # row -> chunk id
        self._order = np.argsort(self.ids)  # rows by id: an id's row by binary search
        self._sorted_ids = self.ids[self._order]

    @classmethod
    def build(cls, texts: Sequence[str], ids: np.ndarray) -> BM25Index:
        if len(texts) != len(ids):
            raise ValueError(f"{len(texts)} texts and {len(ids)} ids do not line up")
        retriever = bm25s.BM25()
        retriever.index(tokenize(texts), show_progress=False)
        log.info("bm25: indexed %d chunks, %d terms", len(texts), len(retriever.vocab_dict))
        return cls(retriever, ids)

    @property
    def count(self) -> int:
        return len(self.ids)

    def search(
        self, query: str, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores (n,), ids (n,)) best first, n <= k: only chunks sharing a term with the
        query (a BM25 score of 0 is no match, not a weak one)."""
        terms = [t for t in tokenize([query])[0] if t in self.retriever.vocab_dict]
        if not terms or k < 1:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = self.retriever.get_scores(terms)  # (N,), a fresh array per call
        if allowed_ids is not None:
            rows = self._rows(np.asarray(allowed_ids, dtype=np.int64))
            kept = np.zeros_like(scores)
            kept[rows] = scores[rows]
            scores = kept
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        hits = hits[np.argsort(-scores[hits], kind="stable")]
        return scores[hits].astype(np.float32), self.ids[hits]

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of those ``ids`` that are in this index."""
        if len(self.ids) == 0 or len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted_ids, ids), len(self.ids) - 1)
        found = self._sorted_ids[pos] == ids
        return self._order[pos[found]]

    def save(self, folder: Path) -> None:
        """Write into ``folder/bm25/`` (inside the index's staging folder: atomic with it)."""
        out = Path(folder) / BM25_DIR
        out.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(out), show_progress=False)
        np.save(out / IDS_FILE, self.ids)

    @classmethod
    def load(cls, folder: Path, mmap: bool = False) -> BM25Index:
        src = Path(folder) / BM25_DIR
        retriever = bm25s.BM25.load(str(src), mmap=mmap, show_progress=False)
        return cls(retriever, np.load(src / IDS_FILE))

    @staticmethod
    def exists(folder: Path) -> bool:
        return (Path(folder) / BM25_DIR / IDS_FILE).is_file()
