"""Label-free retrieval quality: held-out mined queries searched over the mined documents.

A user adapting an encoder to their own corpus has no queries and no relevance labels, yet the
gate has to tell a better encoder from a worse one. The mine stage (``ctxvec.adapt``) holds out
a slice of documents (by a hash of their ids) that is never trained on, and asks one query of
each kind about each of them (``ctxvec.adapt.heldout``: its title, a sentence, its BM25
keywords, a span), each kept only where BM25 finds its document again. Each query has exactly
one relevant document, its own, searched as it reads without the query's words (the query's
``target``); every other mined document is searched whole. nDCG@10 and MRR@10 of exact dense
search are computed per kind and averaged over the kinds with equal weight, so that no one
query style (and no model trained on that style) dominates the measure. This is the
pseudo-query evaluation of the GPL line of work (Wang et al. 2022), with the queries mined
instead of generated; whether it ranks models as real nDCG@10 does is measured on a labelled
corpus (docs/adaptation.md), not assumed.

Input: the mined folder (``heldout.parquet``: ``query, doc_id, signal`` and, from the folders
that hold several kinds, ``target``; ``docs.parquet``: ``doc_id, text``). Older folders (one
sentence or keyword query per document, no ``target``) are read as they were written: each
query's document as ``docs.parquet`` holds it.

Output: ``ndcg@10`` and ``mrr@10`` (the mean over kinds with at least ``MIN_KIND_QUERIES``
queries; all queries pooled when no kind has that many), ``se`` (the standard error of that
nDCG@10), ``n_queries``, and ``ndcg@10/<kind>``, ``n/<kind>`` for every kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ctxvec.errors import DataFormatError
from ctxvec.evaluate.retrieval import NDCG_K
from ctxvec.model.encoder import Encoder

log = logging.getLogger(__name__)

HELDOUT_FILE, DOCS_FILE = "heldout.parquet", "docs.parquet"
MIN_KIND_QUERIES = 20  # a kind asked fewer times is reported, not averaged (too noisy alone)


@dataclass(frozen=True)
class PseudoSet:
    """Held-out queries and the documents they search."""

    queries: list[str]
    relevant: list[str]  # each query's own document id
    kinds: list[str]  # each query's kind
    targets: list[str | None]  # each query's own document as it searches it; None: as in docs
    doc_ids: list[str]
    doc_texts: list[str]


def read_pseudo(folder: str | Path) -> PseudoSet:
    """The held-out queries of a mined folder."""
    folder = Path(folder)
    for name in (HELDOUT_FILE, DOCS_FILE):
        if not (folder / name).is_file():
            raise DataFormatError(f"{folder}: no {name} (not a folder the mine stage wrote)")
    table = pq.read_table(folder / HELDOUT_FILE)
    q = table.to_pydict()
    n = len(q["query"])
    kinds = q.get("signal") or ["query"] * n
    targets = q.get("target") or [None] * n
    d = pq.read_table(folder / DOCS_FILE, columns=["doc_id", "text"]).to_pydict()
    return PseudoSet(q["query"], q["doc_id"], kinds, targets, d["doc_id"], d["text"])


def own_ranks(query_vecs: np.ndarray, doc_vecs: np.ndarray, own: np.ndarray,
              target_vecs: np.ndarray) -> np.ndarray:
    """The rank (1 = first) of each query's own document: column ``own[i]`` of the inner
    products is replaced by query ``i``'s score against its target vector."""
    q = np.ascontiguousarray(query_vecs, dtype=np.float32)
    docs_t = np.ascontiguousarray(doc_vecs.T, dtype=np.float32)
    ranks = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), 1024):  # bounded memory at any size
        s = q[start : start + 1024] @ docs_t
        rows = np.arange(len(s))
        mine = np.einsum("ij,ij->i", q[start : start + 1024],
                         target_vecs[start : start + 1024].astype(np.float32))
        s[rows, own[start : start + 1024]] = -np.inf
        ranks[start : start + 1024] = (s > mine[:, None]).sum(axis=1) + 1
    return ranks


def pseudo_metrics(ranks: np.ndarray, kinds: list[str]) -> dict[str, float]:
    """nDCG@10 and MRR@10 where every query has one relevant document at ``ranks``: per kind,
    and their equal-weight mean over the kinds asked at least ``MIN_KIND_QUERIES`` times."""
    ranks = np.asarray(ranks)
    ndcg = np.where(ranks <= NDCG_K, 1.0 / np.log2(ranks + 1.0), 0.0)
    mrr = np.where(ranks <= 10, 1.0 / ranks, 0.0)
    kinds_a = np.asarray(kinds)
    out: dict[str, float] = {"n_queries": float(len(ranks))}
    used = []
    for kind in sorted(set(kinds)):
        m = kinds_a == kind
        out[f"ndcg@10/{kind}"] = float(ndcg[m].mean())
        out[f"n/{kind}"] = float(m.sum())
        if m.sum() >= MIN_KIND_QUERIES:
            used.append(m)
    if not used:  # too few of every kind: pool them
        used = [np.ones(len(ranks), dtype=bool)]
    out["ndcg@10"] = float(np.mean([ndcg[m].mean() for m in used]))
    out["mrr@10"] = float(np.mean([mrr[m].mean() for m in used]))
    var = [ndcg[m].var(ddof=1) / m.sum() if m.sum() > 1 else 0.0 for m in used]
    out["se"] = float(np.sqrt(np.sum(var)) / len(used))
    return out


def evaluate_pseudo(encoder: Encoder, folder: str | Path,
                    batch_size: int = 64) -> dict[str, float]:
    """-> ``pseudo_metrics`` of the held-out queries of ``folder``."""
    s = read_pseudo(folder)
    if not s.queries:
        raise DataFormatError(f"{folder}: no held-out pseudo-query (adapt.heldout_docs is 0, "
                              "or no held-out document made one that BM25 finds again)")
    log.info("pseudo: %d held-out queries over %d documents", len(s.queries), len(s.doc_ids))
    return score_pseudo(encoder, s, batch_size, progress=True)


def score_pseudo(encoder: Encoder, s: PseudoSet, batch_size: int = 64,
                 progress: bool = False) -> dict[str, float]:
    """Exact dense search of ``s``'s queries over its documents -> ``pseudo_metrics``."""
    col = {d: j for j, d in enumerate(s.doc_ids)}
    missing = sorted({r for r in s.relevant if r not in col})
    if missing:
        raise DataFormatError(f"{len(missing)} held-out queries ask for documents that are not "
                              f"searched (first: {missing[0]})")
    doc_vecs = encoder.encode(s.doc_texts, batch_size=batch_size, progress=progress)
    query_vecs = encoder.encode(s.queries, batch_size=batch_size)
    own = np.asarray([col[r] for r in s.relevant], dtype=np.int64)
    target_vecs = doc_vecs[own].copy()
    rewritten = [i for i, t in enumerate(s.targets) if t is not None]
    if rewritten:
        target_vecs[rewritten] = encoder.encode([s.targets[i] for i in rewritten],
                                                batch_size=batch_size, progress=progress)
    return pseudo_metrics(own_ranks(query_vecs, doc_vecs, own, target_vecs), s.kinds)
