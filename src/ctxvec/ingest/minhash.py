"""MinHash signatures of documents (Broder 1997), computed with numpy.

A document is the set of its word ``shingle``-grams. Each shingle hashes to 64 bits (a 64-bit
hash per word computed over its UTF-8 bytes, combined polynomially over the window), and each of
``num_perm``
multiply-shift hash functions ``(a * x + b) >> 32`` (mod 2^64; Dietzfelbinger et al. 1997) keeps
its minimum over the set: two signatures agree at a position with probability (close to) the
Jaccard similarity of the two sets. Everything is fixed by constants and a seed, so signatures
stored with old snapshots stay comparable across processes, machines and library versions.
"""

from __future__ import annotations

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant: the polynomial's base
_SEED = 1


def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_SEED)
    a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
    return a, b  # a odd: multiply-shift needs it


def _word_byte_table() -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    for c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
        table[c] = True
    table[0x80:] = True  # bytes of multi-byte UTF-8 characters: letters, mostly
    return table


_WORD_BYTE = _word_byte_table()
_POW = np.cumprod(np.full(64, 0x100000001B3, dtype=np.uint64), dtype=np.uint64)  # FNV prime^k


def word_hashes(text: str) -> np.ndarray:
    """uint64 (W,) hashes of the words of ``text`` (runs of letters, digits, '_' and non-ASCII
    characters, lowercased), computed over the UTF-8 bytes with numpy: no Python loop a word."""
    b = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8)
    is_word = _WORD_BYTE[b]
    if not is_word.any():
        return np.empty(0, dtype=np.uint64)
    prev = np.concatenate(([False], is_word[:-1]))
    first = is_word & ~prev  # (B,) a word starts here
    idx = np.flatnonzero(is_word)  # positions of word bytes
    word_no = np.cumsum(first)[idx] - 1  # (n_word_bytes,) which word each byte belongs to
    starts = np.flatnonzero(first)
    pos = (idx - starts[word_no]) % len(_POW)
    with np.errstate(over="ignore"):
        vals = (b[idx].astype(np.uint64) + np.uint64(1)) * _POW[pos]
        offsets = np.concatenate(([0], np.cumsum(np.bincount(word_no))[:-1]))
        h = np.add.reduceat(vals, offsets)
        # splitmix64's finaliser spreads the bits of the polynomial sum
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


class Signer:
    """Text -> MinHash signature with ``num_perm`` permutations over word ``shingle``-grams."""

    def __init__(self, num_perm: int, shingle: int):
        self.num_perm, self.shingle = num_perm, shingle
        self.a, self.b = (x[:, None] for x in _permutations(num_perm))  # (P, 1)

    def shingle_hashes(self, text: str) -> np.ndarray:
        """uint64 (S,) hashes of the distinct word shingles of ``text``."""
        w = word_hashes(text)
        n = min(self.shingle, len(w))
        if n == 0:
            return np.zeros(1, dtype=np.uint64)  # every empty text gets the same signature
        h = w[: len(w) - n + 1].copy()
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps: that is the hash
            for k in range(1, n):
                h = h * _MIX + w[k : len(w) - n + 1 + k]
        return np.unique(h)

    def signature(self, text: str) -> np.ndarray:
        x = self.shingle_hashes(text)[None, :]  # (1, S)
        with np.errstate(over="ignore"):
            return ((self.a * x + self.b) >> np.uint64(32)).min(axis=1)  # (P,)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """-> uint64 (N, num_perm)."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint64)
        for i, t in enumerate(texts):
            out[i] = self.signature(t)
        return out


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The MinHash estimate of the Jaccard similarity of two documents."""
    return float(np.mean(sig_a == sig_b))
