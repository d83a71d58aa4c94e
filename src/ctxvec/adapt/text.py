"""What every signal shares: a document, a mined example, sentences, words and seeded draws.

Draws are seeded per (seed, signal, document), so a document's examples do not depend on which
other documents are mined, in what order, or which other signals are on.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

# What a positive is made of, so that a hard negative can be cut from another document alike:
# the whole document, its text without the title, or a span of words.
View = Literal["full", "text", "span"]


@dataclass(frozen=True)
class Doc:
    doc_id: str
    title: str
    text: str

    @property
    def full(self) -> str:
        """Title and text, as BEIR embeds a document."""
        return f"{self.title} {self.text}".strip() if self.title.strip() else self.text.strip()


@dataclass(frozen=True)
class Example:
    """One mined training example (negatives are added by ``negatives.mine_negatives``)."""

    anchor: str
    positive: str
    signal: str
    doc_id: str
    view: View = "span"
    negatives: tuple[str, ...] = ()


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.replace("\n", " ")) if s.strip()]


def words(text: str) -> list[str]:
    return text.split()


def clip(text: str, max_words: int) -> str:
    w = text.split()
    return text if len(w) <= max_words else " ".join(w[:max_words])


def stable_hash(*parts: str) -> int:
    """A 64-bit hash of strings, the same in every process and run (unlike ``hash``)."""
    h = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def rng_for(seed: int, signal: str, doc_id: str) -> np.random.Generator:
    return np.random.default_rng(stable_hash(str(seed), signal, doc_id))


def window(tokens: list[str], length: int, rng: np.random.Generator) -> str:
    """A random run of ``length`` words (all of them when there are fewer)."""
    if len(tokens) <= length:
        return " ".join(tokens)
    start = int(rng.integers(0, len(tokens) - length + 1))
    return " ".join(tokens[start : start + length])
