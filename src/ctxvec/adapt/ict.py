"""Inverse cloze task (Lee, Chang and Toutanova 2019, "Latent Retrieval for Weakly Supervised
Open Domain Question Answering", ACL): a sentence is the pseudo-query, the sentences around it
its context. The sentence is removed from the context except with probability ``keep_prob``
(0.1 in the paper), so the model learns what the context is *about*, not only word overlap,
while still learning that overlap matters.
"""

from __future__ import annotations

import numpy as np

from ctxvec.adapt.text import Doc, Example, clip, sentences
from ctxvec.config.adapt import ICTConfig

SIGNAL = "ict"
MIN_WORDS = 4  # a shorter sentence ("See below.") says nothing about its context


def _context(sents: list[str], i: int, keep: bool, budget: int) -> str:
    """Sentences around ``i`` (it included when ``keep``), alternately after and before, until
    ``budget`` words are filled."""
    chosen = {i} if keep else set()
    used = len(sents[i].split()) if keep else 0
    lo, hi = i - 1, i + 1
    while (lo >= 0 or hi < len(sents)) and used < budget:
        for j in (hi, lo):
            if 0 <= j < len(sents) and j not in chosen and used < budget:
                chosen.add(j)
                used += len(sents[j].split())
        lo, hi = lo - 1, hi + 1
    return clip(" ".join(sents[j] for j in sorted(chosen)), budget)


def pairs(doc: Doc, cfg: ICTConfig, rng: np.random.Generator) -> list[Example]:
    sents = sentences(doc.text)
    usable = [i for i, s in enumerate(sents) if len(s.split()) >= MIN_WORDS]
    if cfg.max_per_doc == 0 or len(sents) < 2 or not usable:
        return []
    picks = rng.choice(usable, size=min(cfg.max_per_doc, len(usable)), replace=False)
    out = []
    for i in sorted(int(p) for p in picks):
        keep = bool(rng.random() < cfg.keep_prob)
        context = _context(sents, i, keep, cfg.context_words)
        if context:
            out.append(Example(sents[i], context, SIGNAL, doc.doc_id, "span"))
    return out
