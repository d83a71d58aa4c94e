"""Near-duplicate detection with MinHash-LSH (Broder 1997; Leskovec et al., Mining of Massive
Datasets, ch. 3), through the ``datasketch`` library.

A document is a set of word ``shingle``-grams; MinHash signatures estimate the Jaccard similarity
of two such sets, and LSH banding finds candidate pairs above ``threshold`` without comparing every
pair. Signatures are computed where documents are read (in the worker processes) and stored with
each snapshot, so later snapshots are checked against earlier ones without re-reading them.
"""

from __future__ import annotations

import re

import numpy as np
from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+", re.UNICODE)
# Pinned, so that signatures stored in older snapshots stay comparable after a library upgrade.
SCHEME = "affine64"


def shingles(text: str, n: int) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words).encode("utf-8")} if words else set()
    return {" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


def signatures(texts: list[str], num_perm: int, shingle: int) -> np.ndarray:
    """-> uint64 (N, num_perm) MinHash signatures."""
    sets = [shingles(t, shingle) for t in texts]
    mhs = MinHash.bulk(sets, num_perm=num_perm, scheme=SCHEME)
    if not mhs:
        return np.empty((0, num_perm), dtype=np.uint64)
    return np.stack([m.hashvalues for m in mhs]).astype(np.uint64)


class NearDupIndex:
    """An LSH index of kept documents; ``find`` answers "a near-duplicate of which one?"."""

    def __init__(self, threshold: float, num_perm: int):
        self.num_perm = num_perm
        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._sigs: dict[str, np.ndarray] = {}  # raw signatures: 8 bytes per permutation
        # permutations shared by every MinHash we rebuild from stored values
        self._perms = MinHash(num_perm=num_perm, scheme=SCHEME).permutations

    def __len__(self) -> int:
        return len(self._sigs)

    def _minhash(self, sig: np.ndarray) -> MinHash:
        return MinHash(
            num_perm=self.num_perm, hashvalues=sig, permutations=self._perms, scheme=SCHEME
        )

    def add(self, key: str, sig: np.ndarray) -> None:
        if key not in self._sigs:
            self.lsh.insert(key, self._minhash(sig))
            self._sigs[key] = sig

    def find(self, sig: np.ndarray, exclude: str | None = None) -> tuple[str, float] | None:
        """The most similar indexed document at or above the threshold, with its Jaccard.

        ``exclude`` is the document's own id: an earlier version of the same document is an
        update, not a near-duplicate.
        """
        best: tuple[str, float] | None = None
        for key in self.lsh.query(self._minhash(sig)):
            if key == exclude:
                continue
            j = float(np.mean(self._sigs[key] == sig))  # the MinHash estimate of Jaccard
            if j >= self.threshold and (best is None or j > best[1]):
                best = (key, j)
        return best
