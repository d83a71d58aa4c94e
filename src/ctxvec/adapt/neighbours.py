"""Neighbouring passages: two adjacent, non-overlapping passages of one document are about the
same thing. DeCLUTR (Giorgi et al. 2021, "DeCLUTR: Deep Contrastive Learning for Unsupervised
Textual Representations", ACL) samples anchors and positives that are adjacent, overlapping or
subsumed spans of one document; this is its adjacent case, with passages of ``passage_words``
words, the unit a retrieval index holds.
"""

from __future__ import annotations

import numpy as np

from ctxvec.adapt.text import Doc, Example, words
from ctxvec.config.adapt import NeighboursConfig

SIGNAL = "neighbours"


def pairs(doc: Doc, cfg: NeighboursConfig, rng: np.random.Generator) -> list[Example]:
    tokens = words(doc.text)
    n = cfg.passage_words
    passages = [" ".join(tokens[i : i + n]) for i in range(0, len(tokens), n)]
    # a last passage under half the length is too short to stand for anything
    if passages and len(tokens) % n and len(tokens) % n < n // 2:
        passages = passages[:-1]
    if cfg.max_per_doc == 0 or len(passages) < 2:
        return []
    starts = rng.permutation(len(passages) - 1)[: cfg.max_per_doc]
    out = []
    for i in sorted(int(s) for s in starts):
        a, b = (passages[i], passages[i + 1]) if rng.random() < 0.5 else (
            passages[i + 1], passages[i])
        out.append(Example(a, b, SIGNAL, doc.doc_id, "span"))
    return out
