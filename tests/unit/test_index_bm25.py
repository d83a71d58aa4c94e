"""BM25 over chunks (real bm25s) and reciprocal-rank fusion."""

from __future__ import annotations

import numpy as np
import pytest

from ctxvec.index.bm25 import BM25Index
from ctxvec.index.fusion import reciprocal_rank_fusion

TEXTS = [
    "The river Thames flows through London.",
    "Paris is the capital of France; the Seine flows through it.",
    "A football club in England plays in the Premier League.",
    "The Danube flows through Vienna and Budapest.",
    "Cricket is popular in England and India.",
]
IDS = np.array([501, 17, 9_000_000_000, 3, 44], dtype=np.int64)


def test_bm25_ranks_by_terms_and_maps_rows_to_ids(tmp_path):
    index = BM25Index.build(TEXTS, IDS)
    assert index.count == 5
    scores, ids = index.search("football in England", 10)
    assert list(ids[:2]) == [9_000_000_000, 44]  # both mention England; only one football
    assert np.all(np.diff(scores) <= 0) and (scores > 0).all()
    scores, ids = index.search("flows through", 2)  # k caps the hits
    assert len(ids) == 2 and set(ids) <= {501, 17, 3}
    assert len(index.search("zebra quantum", 5)[1]) == 0  # no shared term: no hit
    assert len(index.search("the of", 5)[1]) == 0  # stopwords only

    # a filter leaves only allowed chunks, even when others score higher
    _, ids = index.search("football England", 5, allowed_ids=np.array([44, 3]))
    assert list(ids) == [44]

    index.save(tmp_path)
    assert BM25Index.exists(tmp_path)
    for mmap in (False, True):
        loaded = BM25Index.load(tmp_path, mmap=mmap)
        a, b = loaded.search("capital France Seine", 3), index.search("capital France Seine", 3)
        assert list(a[1]) == list(b[1]) == [17] and np.allclose(a[0], b[0])


def test_bm25_rejects_misaligned_input():
    with pytest.raises(ValueError, match="do not line up"):
        BM25Index.build(TEXTS, IDS[:2])


def test_reciprocal_rank_fusion_sums_reciprocal_ranks():
    dense = ["a", "b", "c"]
    lexical = ["c", "d", "a"]
    fused = dict(reciprocal_rank_fusion([dense, lexical], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62) and fused["d"] == pytest.approx(1 / 62)
    order = [item for item, _ in reciprocal_rank_fusion([dense, lexical], k=60)]
    assert order == ["a", "c", "b", "d"]  # ties keep first-seen order
    # an item both rankings hold beats one that only tops a single ranking
    assert [i for i, _ in reciprocal_rank_fusion([["x", "y"], ["z", "y"]], k=1)][0] == "y"
    assert reciprocal_rank_fusion([], k=60) == []
    with pytest.raises(ValueError, match="at least 1"):
        reciprocal_rank_fusion([dense], k=0)
