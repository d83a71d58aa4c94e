"""Title <-> text pairs: a document's title is a short description of its text, which is what a
query is. Used as a pre-training pair for retrieval by Chang et al. 2020 ("Pre-training Tasks for
Embedding-based Large-scale Retrieval", ICLR) as part of their Body First Selection family, and by
every web-scale embedding mix since (E5: title-passage pairs, Wang et al. 2022).

A title too short to say anything (``min_title_words``), or one equal to the start of the text,
makes no pair.
"""

from __future__ import annotations

from ctxvec.adapt.text import Doc, Example, clip
from ctxvec.config.adapt import TitleTextConfig

SIGNAL = "title_text"


def pairs(doc: Doc, cfg: TitleTextConfig, max_words: int) -> list[Example]:
    title, text = doc.title.strip(), doc.text.strip()
    if cfg.max_per_doc == 0 or len(title.split()) < cfg.min_title_words or not text:
        return []
    if text.lower().startswith(title.lower()) and len(text.split()) <= len(title.split()) + 2:
        return []
    return [Example(title, clip(text, max_words), SIGNAL, doc.doc_id, "text")]
