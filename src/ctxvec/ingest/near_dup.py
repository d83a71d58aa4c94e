"""Near-duplicate detection: MinHash signatures (``minhash.py``) banded by ``datasketch``'s
MinHashLSH (Leskovec et al., Mining of Massive Datasets, ch. 3), so candidates above the
threshold are found without comparing every pair.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from ctxvec.ingest.minhash import jaccard

if TYPE_CHECKING:
    from datasketch import LeanMinHash

_BLOCK = 4096  # signatures are stored in blocks of this many rows

_DATASKETCH_SCHEME = "affine64"  # only needed to build MinHash objects for the LSH


def _band_hash(band: bytes) -> bytes:
    return hashlib.blake2b(band, digest_size=8).digest()  # 8 bytes a band, not 8 per row


class NearDupIndex:
    """An LSH index of kept documents; ``find`` answers "a near-duplicate of which one?"."""

    def __init__(self, threshold: float, num_perm: int):
        from datasketch import LeanMinHash, MinHashLSH

        self._Lean = LeanMinHash
        self.num_perm, self.threshold = num_perm, threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, hashfunc=_band_hash)
        self._row: dict[str, int] = {}
        self._blocks: list[np.ndarray] = []  # (_BLOCK, num_perm) each; 8 bytes a permutation

    def __len__(self) -> int:
        return len(self._row)

    def _minhash(self, sig: np.ndarray) -> LeanMinHash:
        # LeanMinHash: the signature values alone, which is all the LSH reads
        return self._Lean(seed=0, hashvalues=sig, scheme=_DATASKETCH_SCHEME)

    def add(self, key: str, sig: np.ndarray, minhash: LeanMinHash | None = None) -> None:
        if key in self._row:
            return
        n = len(self._row)
        if n == len(self._blocks) * _BLOCK:
            self._blocks.append(np.empty((_BLOCK, self.num_perm), dtype=np.uint64))
        self._blocks[n // _BLOCK][n % _BLOCK] = sig
        self._row[key] = n
        self.lsh.insert(key, minhash if minhash is not None else self._minhash(sig),
                        check_duplication=False)

    def find_or_add(self, key: str, sig: np.ndarray) -> tuple[str, float] | None:
        """``find``, and ``add`` when nothing is found: the ingest's one call per document."""
        mh = self._minhash(sig)
        match = self._best(self.lsh.query(mh), sig, key)
        if match is None:
            self.add(key, sig, mh)
        return match

    def find(self, sig: np.ndarray, exclude: str | None = None) -> tuple[str, float] | None:
        """The most similar indexed document at or above the threshold, with its Jaccard.

        ``exclude`` is the document's own id: an earlier version of the same document is an
        update, not a near-duplicate.
        """
        return self._best(self.lsh.query(self._minhash(sig)), sig, exclude)

    def _best(self, candidates, sig: np.ndarray, exclude: str | None) -> tuple[str, float] | None:
        best: tuple[str, float] | None = None
        for key in candidates:
            if key == exclude:
                continue
            n = self._row[key]
            j = jaccard(self._blocks[n // _BLOCK][n % _BLOCK], sig)
            if j >= self.threshold and (best is None or j > best[1]):
                best = (key, j)
        return best
