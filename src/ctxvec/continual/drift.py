"""How much one encoder version moved from another, measured where it matters for serving.

- ``overlap_at_10``: for each probe text, the share of its 10 nearest documents (each version
  searching its own index) that both versions return. 1.0: users see the same neighbours.
- ``shift``: 1 - mean cosine between the two versions' vectors of the same probe texts (only when
  the dimensions agree; a new architecture has no common space).
- ``similarity_spearman``: Spearman correlation of the probe texts' pairwise cosine similarities
  under each version: the geometry kept, comparable across dimensions.
- per-evaluation deltas: every ``eval.*`` tag of the newer version minus the older one's.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.stats import spearmanr

from ctxvec.ingest.corpus import iter_texts
from ctxvec.refs import ModelRef
from ctxvec.registry import Registry
from ctxvec.serve.search import Searcher
from ctxvec.workspace import Workspace

log = logging.getLogger(__name__)

PROBE_CHARS = 512


def probe_texts(searcher: Searcher, n: int) -> list[str]:
    """The first ``n`` non-empty documents of the newer version's corpus, cut to a query size."""
    out = []
    for text in iter_texts(searcher.corpus):
        if text.strip():
            out.append(text[:PROBE_CHARS])
        if len(out) >= n:
            break
    return out


def _evals(tags: dict[str, str]) -> dict[str, float]:
    out = {}
    for k, v in tags.items():
        if k.startswith("eval."):
            try:
                out[k.removeprefix("eval.")] = float(v)
            except ValueError:
                continue
    return out


def drift_report(ws: Workspace, name: str, old: str, new: str, probes: int = 200,
                 k: int = 10, record: bool = True) -> dict:
    """Compare version ``new`` with version ``old``; with ``record``, store the report on
    ``new`` (a tag ``ctxvec models show`` prints, and metrics on its MLflow run)."""
    registry = Registry(ws)
    old_ref = ModelRef.registered(name, version=old)
    new_ref = ModelRef.registered(name, version=new)
    a = Searcher(ws, old_ref, registry=registry)  # each resolves its version once
    b = Searcher(ws, new_ref, registry=registry)
    texts = probe_texts(b, probes)
    if len(texts) < 2:
        raise ValueError(f"version {new}'s corpus has fewer than 2 documents to probe with")
    va, vb = a.embed(texts), b.embed(texts)
    ha = a.search_vectors(va, k)
    hb = b.search_vectors(vb, k)
    overlap = float(np.mean([len({h.doc_id for h in x} & {h.doc_id for h in y}) / k
                             for x, y in zip(ha, hb, strict=True)]))
    iu = np.triu_indices(len(texts), 1)
    spearman = float(spearmanr((va @ va.T)[iu], (vb @ vb.T)[iu]).statistic)
    shift = float(1.0 - np.mean(np.sum(va * vb, axis=1))) if va.shape == vb.shape else None
    ea = _evals(a.model_version.tags)  # as the searchers resolved them: no second read
    eb = _evals(b.model_version.tags)
    report = {
        "against": old, "version": new, "probes": len(texts), "k": k,
        f"overlap_at_{k}": overlap, "similarity_spearman": spearman, "shift": shift,
        "eval_deltas": {m: eb[m] - ea[m] for m in sorted(ea.keys() & eb.keys())},
    }
    if record:
        registry.set_drift(name, new, report)
    log.info("drift v%s vs v%s: overlap@%d %.3f, similarity spearman %.3f, shift %s",
             new, old, k, overlap, spearman, "n/a" if shift is None else f"{shift:.4f}")
    return report
