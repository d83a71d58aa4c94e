"""Label-free retrieval quality: held-out mined pseudo-queries searched over the mined documents.

A user adapting an encoder to their own corpus has no queries and no relevance labels, yet the
gate has to tell a better encoder from a worse one. The mine stage (``ctxvec.adapt``) holds out a
slice of documents (by a hash of their ids) whose pseudo-queries are never trained on: a
sentence of the document (searched for in the document without that sentence) or its top
BM25-weighted keywords, each kept only where BM25 finds its document again. Each such query has
exactly one relevant document, its own; nDCG@10 and MRR@10 of exact dense search over every
mined document (``docs.parquet``) measure how well the encoder finds it. This is the
pseudo-query evaluation of the GPL line of work (Wang et al. 2022), with the queries mined
instead of generated; whether it ranks models as real nDCG@10 does is measured on a labelled
corpus (docs/adaptation.md), not assumed.

Input: the mined folder (``heldout.parquet``: ``query, doc_id, signal``; ``docs.parquet``:
``doc_id, text``). Query ids are ``pq:<n>``, which never equal a document id, so the
own-id rule of ``exact_search`` never removes a hit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq

from ctxvec.errors import DataFormatError
from ctxvec.evaluate.retrieval import NDCG_K, exact_search, retrieval_metrics
from ctxvec.model.encoder import Encoder

log = logging.getLogger(__name__)

HELDOUT_FILE, DOCS_FILE = "heldout.parquet", "docs.parquet"


def read_pseudo(folder: str | Path) -> tuple[list[str], list[str], list[str], list[str]]:
    """(query texts, their document ids, document ids, document texts) of a mined folder."""
    folder = Path(folder)
    for name in (HELDOUT_FILE, DOCS_FILE):
        if not (folder / name).is_file():
            raise DataFormatError(f"{folder}: no {name} (not a folder the mine stage wrote)")
    q = pq.read_table(folder / HELDOUT_FILE, columns=["query", "doc_id"]).to_pydict()
    d = pq.read_table(folder / DOCS_FILE, columns=["doc_id", "text"]).to_pydict()
    return q["query"], q["doc_id"], d["doc_id"], d["text"]


def pseudo_metrics(ranked: dict[str, list[str]], relevant: list[str]) -> dict[str, float]:
    """nDCG@10 and MRR@10 where query ``pq:<i>`` has one relevant document, ``relevant[i]``."""
    qrels = {f"pq:{i}": {doc: 1} for i, doc in enumerate(relevant)}
    r = retrieval_metrics(ranked, qrels)
    return {"ndcg@10": r[f"ndcg@{NDCG_K}"], "mrr@10": r["mrr@10"], "n_queries": r["n_queries"]}


def evaluate_pseudo(encoder: Encoder, folder: str | Path,
                    batch_size: int = 64) -> dict[str, float]:
    """-> {"ndcg@10", "mrr@10", "n_queries"} of the held-out pseudo-queries of ``folder``."""
    queries, relevant, doc_ids, doc_texts = read_pseudo(folder)
    if not queries:
        raise DataFormatError(f"{folder}: no held-out pseudo-query (adapt.heldout_docs is 0, "
                              "or no held-out document made one that BM25 finds again)")
    log.info("pseudo: %d held-out queries over %d documents", len(queries), len(doc_ids))
    return score_pseudo(encoder, queries, relevant, doc_ids, doc_texts, batch_size,
                        progress=True)


def score_pseudo(encoder: Encoder, queries: list[str], relevant: list[str], doc_ids: list[str],
                 doc_texts: list[str], batch_size: int = 64,
                 progress: bool = False) -> dict[str, float]:
    """Exact dense search of ``queries`` over the documents; query ``i``'s one relevant
    document is ``relevant[i]`` -> ``pseudo_metrics``."""
    doc_vecs = encoder.encode(doc_texts, batch_size=batch_size, progress=progress)
    query_vecs = encoder.encode(queries, batch_size=batch_size)
    ranked = exact_search(query_vecs, doc_vecs, [f"pq:{i}" for i in range(len(queries))],
                          doc_ids, NDCG_K)
    return pseudo_metrics(ranked, relevant)
