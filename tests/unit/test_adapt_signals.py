"""The structural signals of ctxvec.adapt on small documents: what each pairs, and that a seed
decides it (the same seed, the same pairs; another seed, other draws)."""

from __future__ import annotations

from ctxvec.adapt import crops, ict, neighbours, title_text
from ctxvec.adapt.text import Doc, rng_for, sentences
from ctxvec.config.adapt import CropsConfig, ICTConfig, NeighboursConfig, TitleTextConfig
from tests.adapt_corpus import documents

DOCS = [Doc(d["_id"], d["title"], d["text"]) for d in documents(12)]


def test_title_text_pairs_the_title_with_its_text():
    doc = DOCS[0]
    [ex] = title_text.pairs(doc, TitleTextConfig(), max_words=1000)
    assert (ex.anchor, ex.positive, ex.signal, ex.doc_id) == (doc.title, doc.text, "title_text",
                                                              doc.doc_id)
    assert title_text.pairs(Doc("x", "one", doc.text), TitleTextConfig(), 1000) == []  # too short
    assert title_text.pairs(doc, TitleTextConfig(max_per_doc=0), 1000) == []
    assert title_text.pairs(Doc("x", "", doc.text), TitleTextConfig(), 1000) == []


def test_ict_takes_a_sentence_and_its_context_without_it():
    doc = DOCS[1]
    cfg = ICTConfig(keep_prob=0.0, context_words=1000)
    [ex] = ict.pairs(doc, cfg, rng_for(0, "ict", doc.doc_id))
    sents = sentences(doc.text)
    assert ex.anchor in sents and ex.signal == "ict"
    rest = [s for s in sents if s != ex.anchor]
    assert ex.positive == " ".join(rest)  # the whole document but the sentence
    kept = ict.pairs(doc, ICTConfig(keep_prob=1.0, context_words=1000),
                     rng_for(0, "ict", doc.doc_id))[0]
    assert kept.anchor in kept.positive
    short = ict.pairs(doc, ICTConfig(keep_prob=0.0, context_words=20),
                      rng_for(0, "ict", doc.doc_id))[0]
    assert len(short.positive.split()) <= 20 and short.anchor not in short.positive
    assert ict.pairs(Doc("x", "", "One sentence only here."), cfg, rng_for(0, "ict", "x")) == []


def test_crops_are_two_spans_of_the_document_within_the_ratios():
    doc = DOCS[2]
    cfg = CropsConfig(min_ratio=0.2, max_ratio=0.4, min_words=10)
    [ex] = crops.pairs(doc, cfg, rng_for(0, "crops", doc.doc_id), max_words=1000)
    n = len(doc.text.split())
    for span in (ex.anchor, ex.positive):
        assert span in doc.text
        assert int(0.2 * n) - 1 <= len(span.split()) <= int(0.4 * n) + 1
    assert crops.pairs(Doc("x", "", "too short a text"), cfg, rng_for(0, "crops", "x"), 100) == []


def test_neighbours_are_adjacent_passages():
    doc = DOCS[3]
    cfg = NeighboursConfig(passage_words=10)
    [ex] = neighbours.pairs(doc, cfg, rng_for(0, "neighbours", doc.doc_id))
    words = doc.text.split()
    passages = [" ".join(words[i:i + 10]) for i in range(0, len(words), 10)]
    i = passages.index(ex.anchor)
    assert ex.positive in (passages[i - 1] if i else None, passages[i + 1] if
                           i + 1 < len(passages) else None)
    one = Doc("x", "", " ".join(words[:12]))  # one passage and a short tail: no pair
    assert neighbours.pairs(one, cfg, rng_for(0, "neighbours", "x")) == []


def _all(seed: int):
    out = []
    for d in DOCS:
        out += ict.pairs(d, ICTConfig(), rng_for(seed, "ict", d.doc_id))
        out += crops.pairs(d, CropsConfig(), rng_for(seed, "crops", d.doc_id), 256)
        out += neighbours.pairs(d, NeighboursConfig(passage_words=16),
                                rng_for(seed, "neighbours", d.doc_id))
    return out


def test_a_seed_decides_the_pairs():
    assert _all(0) == _all(0)
    assert _all(0) != _all(1)
    # a document's draws do not depend on the other documents
    d = DOCS[5]
    alone = crops.pairs(d, CropsConfig(), rng_for(0, "crops", d.doc_id), 256)
    assert alone == [e for e in _all(0) if e.doc_id == d.doc_id and e.signal == "crops"]
