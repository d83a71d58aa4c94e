"""Held-out queries of every kind the miner makes: what the label-free measure asks.

The label-free measure (``ctxvec.evaluate.pseudo``) scores a model on queries made from
documents it never trained on. Which *kind* of query matters: a measure built from one kind
(a sentence, BM25 keywords) rewards a model trained on that kind for the query style, not for
knowing the domain. Measured on ArguAna (docs/adaptation.md), a model trained on pseudo-queries
alone gained 1.8 points on such a measure while losing 0.6 on the real labels. So every
held-out document asks one query of each kind the miner makes from a document alone, and the
measure averages the kinds with equal weight (``KINDS``):

- ``title``: the title, searched for in the text without it (as ``title_text`` pairs);
- ``sentence``: one sentence, searched for in the document without it (ICT, pseudo-sentences);
- ``keywords``: the document's top BM25-weighted terms, searched for in the whole document;
- ``crop``: a span of ``adapt.crops`` length, searched for in the document without that span
  (Contriever crops and ICT at passage length; also the long-query case of argument or
  duplicate retrieval).

Each query's own document is searched *as it would be without the query's words* (its
``target``), so finding it is a matter of meaning, not of copying; every other document is
searched whole. A query is kept only where BM25 over the mined documents finds its document
again in the top ``adapt.pseudo_queries.filter_k`` (round-trip filtering: no model's
preference decides what is asked, and a query too generic to single out its document is not
asked). With one query of each kind per held-out document, the measure has several times as
many queries as documents held out, which narrows its standard error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctxvec.adapt import pseudo_queries
from ctxvec.adapt.search import DocSearch
from ctxvec.adapt.text import Doc, clip, rng_for, words
from ctxvec.config import AdaptConfig

KINDS = ("title", "sentence", "keywords", "crop")
SIGNAL = "heldout"  # the seed stream of held-out draws (apart from every training signal's)
FORMAT = 2  # of heldout.parquet, in the mine key: a folder of an older format is mined again


@dataclass(frozen=True)
class HeldoutQuery:
    text: str
    row: int  # the document's position in the mined documents
    kind: str  # one of KINDS
    target: str | None  # the own document as this query searches it; None: the whole document


def _title(doc: Doc, acfg: AdaptConfig, max_words: int) -> HeldoutQuery | None:
    title, text = doc.title.strip(), doc.text.strip()
    if len(title.split()) < acfg.title_text.min_title_words or not text:
        return None
    if text.lower().startswith(title.lower()) and len(text.split()) <= len(title.split()) + 2:
        return None
    return HeldoutQuery(title, -1, "title", clip(text, max_words))


def _crop(doc: Doc, acfg: AdaptConfig, rng: np.random.Generator,
          max_words: int) -> HeldoutQuery | None:
    tokens = words(doc.text)
    cfg = acfg.crops
    if len(tokens) < max(cfg.min_words, 8):
        return None
    ratio = rng.uniform(cfg.min_ratio, cfg.max_ratio)
    length = min(len(tokens) - 4, max(4, int(round(ratio * len(tokens)))))
    start = int(rng.integers(0, len(tokens) - length + 1))
    span = " ".join(tokens[start : start + length])
    rest = " ".join(tokens[:start] + tokens[start + length :])
    target = f"{doc.title} {rest}".strip() if doc.title.strip() else rest
    return HeldoutQuery(clip(span, max_words), -1, "crop", clip(target, max_words))


def candidates(docs: Sequence[Doc], rows: Sequence[int], search: DocSearch,
               acfg: AdaptConfig) -> list[HeldoutQuery]:
    """At most one query of each kind per document at ``rows``, before BM25's filter. Drawn
    from their own seed stream, so the held-out questions do not change when a training
    signal's settings do."""
    pcfg = acfg.pseudo_queries.model_copy(update={"max_per_doc": 1,
                                                  "kinds": ["sentence", "keywords"]})
    mw = acfg.max_words
    made = pseudo_queries.candidates(docs, rows, search, pcfg, acfg.seed, mw)
    by_row: dict[int, list[HeldoutQuery]] = {}
    for q in made:
        target = q.positive if q.kind == "sentence" else None
        by_row.setdefault(q.row, []).append(HeldoutQuery(q.text, q.row, q.kind, target))
    out: list[HeldoutQuery] = []
    for row in rows:
        doc = docs[row]
        rng = rng_for(acfg.seed, SIGNAL, doc.doc_id)
        for q in (_title(doc, acfg, mw), _crop(doc, acfg, rng, mw)):
            if q is not None:
                by_row.setdefault(row, []).append(
                    HeldoutQuery(q.text, row, q.kind, q.target))
        out += sorted(by_row.get(row, []), key=lambda q: KINDS.index(q.kind))
    return out


def heldout_queries(docs: Sequence[Doc], rows: Sequence[int], search: DocSearch,
                    acfg: AdaptConfig) -> tuple[list[HeldoutQuery], int]:
    """(the held-out queries of the documents at ``rows`` that BM25 finds again, how many were
    made). ``search`` indexes ``docs`` (whole)."""
    made = candidates(docs, list(rows), search, acfg)
    if not made:
        return [], 0
    own = np.asarray([q.row for q in made])[:, None]
    found, _ = search.bm25_top([q.text for q in made], acfg.pseudo_queries.filter_k)
    keep = (found == own).any(axis=1)
    return [q for q, k in zip(made, keep, strict=True) if k], len(made)

