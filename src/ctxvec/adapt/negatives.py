"""Hard negatives for mined examples, from BM25 and from the starting encoder, with likely false
negatives dropped by a margin against the positive's score.

In-batch negatives are mostly easy; a few documents that a retriever ranks high for the anchor
but that are not its document teach the finer distinctions (DPR, Karpukhin et al. 2020, with
BM25 negatives; ANCE, Xiong et al. 2021, with the model's own). In an unlabelled corpus some of
those candidates are in fact relevant, so, as sentence-transformers' ``mine_hard_negatives``
does with its ``relative_margin``, a candidate whose score exceeds ``(1 - margin)`` times the
positive's is dropped; NV-Retriever (Moreira et al. 2024, "NV-Retriever: Improving text
embedding models with effective hard-negative mining") found this "TopK-PercPos" rule with a 95%
ceiling (margin 0.05) the best of the rules it compared.

Scores are the encoder's cosine between the anchor and the candidate document, and the anchor and
its own document, when an encoder is given; otherwise BM25 scores, where a positive document that
BM25 does not rank among the candidates has score 0, so every candidate is dropped (no evidence
that any is less relevant than the positive). Candidates come from each source in rank order,
alternately; the hardest ones that pass the margin are kept. Documents not allowed (held out for
evaluation, and the example's own) are never negatives.

A negative is cut like its positive (``Example.view``): a whole document, a text, or a span of
as many words as the positive from a random place of the negative document.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from tqdm.auto import tqdm

from ctxvec.adapt.search import DocSearch
from ctxvec.adapt.text import Doc, Example, clip, rng_for, window, words
from ctxvec.config.adapt import NegativesConfig

log = logging.getLogger(__name__)


@dataclass
class NegativeStats:
    examples: int = 0
    with_negatives: int = 0
    negatives: int = 0
    dropped_by_margin: int = 0


def _candidates(anchors: Sequence[str], search: DocSearch, cfg: NegativesConfig
                ) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Candidate rows per source (each (Q, candidates + 1)), and the anchors' vectors."""
    k = cfg.candidates + 1  # one more: the example's own document is usually among them
    vecs = search.encode(anchors) if search.encoder is not None else None
    ranked = []
    if "bm25" in cfg.sources:
        ranked.append(search.bm25_top(anchors, k)[0])
    if "encoder" in cfg.sources and vecs is not None:
        ranked.append(search.dense_top(vecs, k)[0])
    return ranked, vecs


def _interleave(lists: Sequence[np.ndarray]) -> list[int]:
    out, seen = [], set()
    for rank in range(max((len(x) for x in lists), default=0)):
        for x in lists:
            if rank < len(x) and x[rank] >= 0 and int(x[rank]) not in seen:
                seen.add(int(x[rank]))
                out.append(int(x[rank]))
    return out


def _bm25_scores(anchor_rows: np.ndarray, anchor_scores: np.ndarray) -> dict[int, float]:
    return {int(r): float(s) for r, s in zip(anchor_rows, anchor_scores, strict=True) if r >= 0}


def negative_text(example: Example, doc: Doc, rng: np.random.Generator, max_words: int) -> str:
    if example.view == "full":
        return clip(doc.full, max_words)
    if example.view == "text":
        return clip(doc.text, max_words)
    return window(words(doc.text), len(example.positive.split()), rng)


def mine_negatives(examples: Sequence[Example], rows: Sequence[int], docs: Sequence[Doc],
                   allowed: np.ndarray, search: DocSearch, cfg: NegativesConfig, seed: int,
                   max_words: int) -> tuple[list[Example], NegativeStats]:
    """``examples`` with up to ``per_example`` hard negatives each. ``rows``: each example's
    document; ``allowed``: (N,) bool, documents that may be negatives."""
    stats = NegativeStats(examples=len(examples))
    if cfg.per_example == 0 or not examples:
        return list(examples), stats
    anchors = [e.anchor for e in examples]
    ranked, vecs = _candidates(anchors, search, cfg)
    bm25 = search.bm25_top(anchors, cfg.candidates + 1) if vecs is None else None
    out = []
    for i, ex in enumerate(tqdm(examples, desc="negatives", unit="example", leave=False,
                                disable=len(examples) < 1000)):
        own = rows[i]
        cand = [r for r in _interleave([x[i] for x in ranked]) if r != own and allowed[r]]
        if vecs is not None:
            assert search.doc_vecs is not None
            pos = float(vecs[i] @ search.doc_vecs[own])
            score = dict(zip(cand, (search.doc_vecs[cand] @ vecs[i]).tolist(), strict=True))
        else:
            assert bm25 is not None
            bm = _bm25_scores(bm25[0][i], bm25[1][i])
            pos, score = bm.get(own, 0.0), {r: bm.get(r, 0.0) for r in cand}
        ceiling = pos - cfg.margin * abs(pos)
        kept = [r for r in cand if score[r] < ceiling]
        stats.dropped_by_margin += len(cand) - len(kept)
        kept = sorted(kept, key=lambda r: -score[r])[: cfg.per_example]  # the hardest
        rng = rng_for(seed, f"negatives:{i}", ex.doc_id)
        negs = tuple(negative_text(ex, docs[r], rng, max_words) for r in kept)
        stats.with_negatives += bool(negs)
        stats.negatives += len(negs)
        out.append(replace(ex, negatives=negs))
    log.info("mine: %d of %d examples got hard negatives (%d in all); %d candidates dropped by "
             "the margin", stats.with_negatives, stats.examples, stats.negatives,
             stats.dropped_by_margin)
    return out, stats
