"""Near-duplicate detection: MinHash signatures (``minhash.py``) cut into LSH bands (Leskovec et
al., Mining of Massive Datasets, ch. 3), so candidates above the threshold are found without
comparing every pair, then checked by their estimated Jaccard.

The banding is datasketch's ``MinHashLSH`` with an 8-byte BLAKE2b of each band, as the in-memory
index used before: the same ``(b, r)`` for a threshold and ``num_perm`` (datasketch's optimum of
false positives and negatives), the same band bytes, the same keys. Computed here so the keys can
be stored on disk (``dedup_state.py``) and any store finds exactly the candidates datasketch found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from ctxvec.ingest.minhash import jaccard


class LshBands:
    """``b`` bands of ``r`` signature values each; ``keys`` gives each band's 64-bit key."""

    def __init__(self, threshold: float, num_perm: int):
        from datasketch import MinHashLSH  # lazy: imports scipy, only when near_dup is on

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.threshold, self.num_perm, self.b, self.r = threshold, num_perm, lsh.b, lsh.r

    def keys(self, sigs: np.ndarray) -> np.ndarray:
        """uint64 (N, num_perm) signatures -> int64 (N, b) band keys: BLAKE2b-64 of each band's
        values as big-endian bytes (datasketch's ``hashfunc(bytes(hs.byteswap().data))``)."""
        n, step = len(sigs), 8 * self.r
        raw = memoryview(np.ascontiguousarray(sigs[:, : self.b * self.r], dtype=">u8").tobytes())
        out = np.empty(n * self.b, dtype=np.int64)
        for k in range(n * self.b):
            digest = hashlib.blake2b(raw[k * step:(k + 1) * step], digest_size=8).digest()
            out[k] = int.from_bytes(digest, "little", signed=True)
        return out.reshape(n, self.b)


def best_match(sig: np.ndarray, candidates: Iterable[tuple[int, str, np.ndarray]],
               threshold: float, exclude: str) -> tuple[str, float] | None:
    """The most similar candidate ``(row, doc_id, signature)`` at or above the threshold, with its
    Jaccard; ties go to the earliest row (the document indexed first).

    ``exclude`` is the document's own id: an earlier version of the same document is an update,
    not a near-duplicate.
    """
    best: tuple[str, float] | None = None
    for _, key, other in sorted(candidates, key=lambda c: c[0]):
        if key == exclude:
            continue
        j = jaccard(other, sig)
        if j >= threshold and (best is None or j > best[1]):
            best = (key, j)
    return best
