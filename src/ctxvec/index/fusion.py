"""Reciprocal-rank fusion: several rankings of the same items -> one ranking.

Cormack, Clarke and Buettcher (2009), "Reciprocal Rank Fusion outperforms Condorcet and
individual Rank Learning Methods". Each item scores sum over rankings of 1 / (k + rank), rank
counted from 1. It needs only ranks, never scores, which is why it suits fusing BM25 (unbounded
scores) with cosine similarities: no calibration between the two. k (``query.rrf_k``, 60 in the
paper) damps the weight of the very first ranks.

Each ranking brings its top ``fusion_depth(k)`` items to a fusion whose top k is kept: an item
ranked low by one retriever and high by the other can still win, which a cut at k would hide.
``ctxvec query --hybrid`` (``ctxvec.serve.search``) and ``ctxvec eval retrieval --hybrid``
(``ctxvec.index.hybrid``) both fuse with these two functions.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

RRF_DEPTH = 100  # items each ranking brings to a fusion, at the least


def fusion_depth(k: int) -> int:
    """How deep each ranking goes for a fused top ``k``: 4 k, and never under ``RRF_DEPTH``."""
    return max(4 * k, RRF_DEPTH)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hashable]], k: int = 60
) -> list[tuple[Hashable, float]]:
    """Rankings (best first, items unique within each) -> [(item, fused score)] best first;
    ties keep the order in which items were first seen."""
    if k < 1:
        raise ValueError(f"rrf k must be at least 1, got {k}")
    scores: dict[Hashable, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])
