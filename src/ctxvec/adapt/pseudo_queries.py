"""Pseudo-queries without a query generator, kept only when a retriever finds their document.

GPL (Wang et al. 2022, "GPL: Generative Pseudo Labeling for Unsupervised Domain Adaptation of
Dense Retrieval", NAACL) trains on queries a T5 model wrote for each document; we have no
generator, so a query is made from the document itself:

- ``sentence``: one of its sentences (``min_sentence_words`` to ``max_sentence_words`` words),
  paired with the document *without* that sentence, so the pair is not solved by copying;
- ``keywords``: ``keywords`` terms drawn, by weight, from the document's highest BM25-weighted
  terms (the terms that single it out in this corpus, as in Doc2Query--'s and query-likelihood
  term selection), in the order they first appear in it; paired with the whole document.

Many such queries are generic ("This is not the case."); round-trip filtering (Promptagator,
Dai et al. 2022, "Promptagator: Few-shot Dense Retrieval From 8 Examples", ICLR 2023; Alberti
et al. 2019 before it) keeps a query only when a retriever ranks its own document in the top
``filter_k``: BM25, the starting encoder, or either of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from ctxvec.adapt.search import DocSearch
from ctxvec.adapt.text import Doc, Example, clip, rng_for, sentences
from ctxvec.config.adapt import PseudoQueriesConfig

SIGNAL = {"sentence": "pseudo_sentence", "keywords": "pseudo_keywords"}
CANDIDATE_FACTOR = 3  # keywords are drawn from the top 3 x keywords terms by weight


@dataclass(frozen=True)
class Query:
    text: str
    row: int  # the document's position in the mined documents
    kind: str
    positive: str  # the document as the query's positive (without the sentence for 'sentence')


def _sentence_queries(doc: Doc, row: int, cfg: PseudoQueriesConfig, rng: np.random.Generator,
                      max_words: int) -> list[Query]:
    sents = sentences(doc.text)
    usable = [i for i, s in enumerate(sents)
              if cfg.min_sentence_words <= len(s.split()) <= cfg.max_sentence_words]
    if len(sents) < 2 or not usable:
        return []
    picks = rng.choice(usable, size=min(cfg.max_per_doc, len(usable)), replace=False)
    out = []
    for i in sorted(int(p) for p in picks):
        rest = " ".join(s for j, s in enumerate(sents) if j != i)
        positive = f"{doc.title} {rest}".strip() if doc.title.strip() else rest
        out.append(Query(sents[i], row, "sentence", clip(positive, max_words)))
    return out


def _keyword_queries(doc: Doc, row: int, weights: sparse.csr_matrix, vocab: Sequence[str],
                     cfg: PseudoQueriesConfig, rng: np.random.Generator,
                     max_words: int) -> list[Query]:
    start, end = weights.indptr[row], weights.indptr[row + 1]
    terms, w = weights.indices[start:end], weights.data[start:end]
    keep = [i for i, t in enumerate(terms) if vocab[t]]
    if len(keep) < 2:
        return []
    terms, w = terms[keep], w[keep]
    # by weight, ties by the term itself: term ids follow the order of a Python set, which
    # changes from one process to the next
    names = np.asarray([vocab[t] for t in terms])
    top = np.lexsort((names, -w))[: cfg.keywords * CANDIDATE_FACTOR]
    n = min(cfg.keywords, len(top))
    lowered = doc.full.lower()
    out = []
    for _ in range(cfg.max_per_doc):
        p = w[top] / w[top].sum()
        chosen = [vocab[terms[i]] for i in rng.choice(top, size=n, replace=False, p=p)]
        chosen.sort(key=lambda t: (lowered.find(t) if t in lowered else len(lowered), t))
        out.append(Query(" ".join(chosen), row, "keywords", clip(doc.full, max_words)))
    return out


def candidates(docs: Sequence[Doc], rows: Sequence[int], search: DocSearch,
               cfg: PseudoQueriesConfig, seed: int, max_words: int) -> list[Query]:
    """Every pseudo-query of the documents at ``rows``, before filtering."""
    if cfg.max_per_doc == 0:
        return []
    weights = search.term_weights() if "keywords" in cfg.kinds else None
    vocab = search.vocabulary() if weights is not None else []
    out: list[Query] = []
    for row in rows:
        doc = docs[row]
        if "sentence" in cfg.kinds:
            out += _sentence_queries(doc, row, cfg, rng_for(seed, SIGNAL["sentence"], doc.doc_id),
                                     max_words)
        if weights is not None:
            out += _keyword_queries(doc, row, weights, vocab, cfg,
                                    rng_for(seed, SIGNAL["keywords"], doc.doc_id), max_words)
    return out


def found(queries: Sequence[Query], search: DocSearch, how: str, k: int) -> np.ndarray:
    """Whether each query's own document is in the top ``k`` of ``how`` (bm25, encoder, either).
    """
    if not queries:
        return np.zeros(0, dtype=bool)
    own = np.asarray([q.row for q in queries])[:, None]
    texts = [q.text for q in queries]
    hit = np.zeros(len(queries), dtype=bool)
    if how in ("bm25", "either"):
        rows, _ = search.bm25_top(texts, k)
        hit |= (rows == own).any(axis=1)
    if how in ("encoder", "either"):
        rows, _ = search.dense_top(search.encode(texts), k)
        hit |= (rows == own).any(axis=1)
    return hit


def to_examples(queries: Sequence[Query], docs: Sequence[Doc]) -> list[Example]:
    return [Example(q.text, q.positive, SIGNAL[q.kind], docs[q.row].doc_id, "full")
            for q in queries]
