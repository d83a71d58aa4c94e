"""Independent cropping (Izacard et al. 2021, "Unsupervised Dense Information Retrieval with
Contrastive Learning", Contriever): two spans drawn independently from one document, each
``min_ratio`` to ``max_ratio`` of its words (10% to 50% in the paper), are a positive pair. They
may overlap or not; unlike ICT, both sides have the same distribution, and the paper found it
the stronger pre-training signal of the two.
"""

from __future__ import annotations

import numpy as np

from ctxvec.adapt.text import Doc, Example, clip, window, words
from ctxvec.config.adapt import CropsConfig

SIGNAL = "crops"


def _crop(tokens: list[str], cfg: CropsConfig, rng: np.random.Generator) -> str:
    ratio = rng.uniform(cfg.min_ratio, cfg.max_ratio)
    return window(tokens, max(4, int(round(ratio * len(tokens)))), rng)


def pairs(doc: Doc, cfg: CropsConfig, rng: np.random.Generator,
          max_words: int) -> list[Example]:
    tokens = words(doc.text)
    if cfg.max_per_doc == 0 or len(tokens) < cfg.min_words:
        return []
    return [Example(clip(_crop(tokens, cfg, rng), max_words),
                    clip(_crop(tokens, cfg, rng), max_words), SIGNAL, doc.doc_id, "span")
            for _ in range(cfg.max_per_doc)]
