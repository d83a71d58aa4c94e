"""Mining on a small synthetic corpus: the pseudo-query filter, hard negatives and their margin,
the held-out split, determinism, and the mined folder that training and evaluation read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ctxvec.adapt import pseudo_queries
from ctxvec.adapt.mine import hash_sample, heldout_mask, run_mine
from ctxvec.adapt.negatives import mine_negatives
from ctxvec.adapt.search import DocSearch
from ctxvec.adapt.text import Doc, Example
from ctxvec.config import ConfigError, load_config, objective_config
from ctxvec.config.adapt import NegativesConfig, PseudoQueriesConfig
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.train.datasets import load_examples
from tests.adapt_corpus import documents, write_corpus
from tests.helpers import TINY, tiny_bert

DOCS = [Doc(d["_id"], d["title"], d["text"]) for d in documents(30)]
BM25_ONLY = ["adapt.pseudo_queries.filter=bm25", "adapt.negatives.sources=[bm25]"]


def _cfg(corpus: Path, *extra: str):
    return load_config(TINY, [f"ingest.sources=[{corpus}]", "ingest.id_field=_id",
                              "ingest.max_docs=null", "ingest.near_dup.enabled=false",
                              "adapt.heldout_docs=6", *extra])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("adapt") / "corpus.jsonl", n=30)


def _mine(tmp: Path, corpus: Path, *extra: str, model_dir=None):
    from ctxvec.workspace import Workspace

    cfg = _cfg(corpus, *extra)
    ws = Workspace(tmp).ensure()
    return cfg, run_mine(cfg, ws, run_ingest(cfg, ws), model_dir)


def test_filter_keeps_only_queries_whose_document_bm25_ranks_in_top_k():
    search = DocSearch.build([d.full for d in DOCS])
    own = DOCS[4]
    specific = pseudo_queries.Query(own.title, 4, "keywords", own.full)
    generic = pseudo_queries.Query("the of and to in is was", 4, "sentence", own.full)
    elsewhere = pseudo_queries.Query(DOCS[9].title, 4, "keywords", own.full)  # another's words
    mixed = pseudo_queries.Query(f"{DOCS[9].title} {own.title.split()[0]}", 4, "keywords",
                                 own.full)
    kept = pseudo_queries.found([specific, generic, elsewhere, mixed], search, "bm25", k=1)
    assert kept.tolist() == [True, False, False, False]
    # with room for every document, a query sharing a term with its document is found; one of
    # stopwords alone never is
    wide = pseudo_queries.found([generic, mixed], search, "bm25", k=len(DOCS))
    assert wide.tolist() == [False, True]


def test_keyword_queries_are_terms_of_their_document():
    search = DocSearch.build([d.full for d in DOCS])
    cfg = PseudoQueriesConfig(kinds=["keywords"], keywords=4)
    qs = pseudo_queries.candidates(DOCS, [0, 1, 2], search, cfg, seed=0, max_words=1000)
    assert [q.row for q in qs] == [0, 1, 2]
    for q in qs:
        terms = q.text.split()
        assert len(terms) == 4
        assert all(t in DOCS[q.row].full.lower() for t in terms)
        assert q.positive == DOCS[q.row].full


KEYWORDS_IN_A_FRESH_PROCESS = """
from ctxvec.adapt import pseudo_queries
from ctxvec.adapt.search import DocSearch
from ctxvec.adapt.text import Doc
from ctxvec.config.adapt import PseudoQueriesConfig
from tests.adapt_corpus import documents
docs = [Doc(d["_id"], d["title"], d["text"]) for d in documents(30)]
# documents whose terms tie on BM25 weight: the same words, each once, in every one
docs += [Doc(f"t{i}", "", f"alpha beta gamma delta epsilon zeta eta theta iota kappa w{i % 3}. "
             f"Another sentence about item {i}.") for i in range(20)]
qs = pseudo_queries.candidates(docs, range(len(docs)), DocSearch.build([d.full for d in docs]),
                               PseudoQueriesConfig(kinds=["keywords"]), 0, 1000)
print("|".join(q.text for q in qs))
"""


def test_keyword_queries_do_not_depend_on_the_process(tmp_path):
    # BM25's term ids follow a set's order, which Python randomises per process; terms of equal
    # weight must still be drawn the same way, or mining one corpus twice gives different data
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = {subprocess.run([sys.executable, "-c", KEYWORDS_IN_A_FRESH_PROCESS], cwd=root,
                          env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True,
                          text=True, check=True).stdout for seed in ("1", "2", "3")}
    assert len(out) == 1 and out.pop().count("|") > 40


def test_negatives_exclude_the_positive_document_and_candidates_within_the_margin():
    docs = [Doc("a", "", "apple banana cherry apple banana"),
            Doc("b", "", "apple banana cherry apple banana"),   # scores as the positive does
            Doc("c", "", "apple durian elderberry fig grape"),  # a weaker match: a negative
            Doc("d", "", "kiwi lemon mango nectarine olive"),   # no match at all
            Doc("e", "", "apple banana papaya quince")]         # held out: never a negative
    search = DocSearch.build([d.full for d in docs])
    ex = Example("apple banana", docs[0].text, "crops", "a", "full")
    allowed = np.array([True, True, True, True, False])
    cfg = NegativesConfig(sources=["bm25"], per_example=3, margin=0.05)
    [out], stats = mine_negatives([ex], [0], docs, allowed, search, cfg, seed=0, max_words=100)
    assert out.negatives == (docs[2].text,)  # not a (own), b (within the margin), e (held out)
    assert stats.dropped_by_margin == 1
    # without a margin the duplicate is the hardest negative
    cfg0 = NegativesConfig(sources=["bm25"], per_example=3, margin=0.0)
    [out0], _ = mine_negatives([ex], [0], docs, allowed, search, cfg0, 0, 100)
    assert out0.negatives[0] == docs[2].text  # an equal score is not below the positive's
    assert docs[0].text not in out0.negatives


def test_heldout_share_and_count_by_doc_id_hash():
    ids = [f"doc{i}" for i in range(400)]
    share = heldout_mask(ids, 0.25)
    assert 60 < share.sum() < 140
    # a document's fate depends on its id alone, not on the other documents
    assert heldout_mask(ids[:100], 0.25).tolist() == share[:100].tolist()
    assert heldout_mask(ids, 7).sum() == 7 and heldout_mask(ids, 0).sum() == 0


def test_heldout_cap_keeps_the_documents_of_smallest_hash():
    ids = [f"doc{i}" for i in range(400)]
    share = heldout_mask(ids, 0.25)
    capped = heldout_mask(ids, 0.25, cap=20)
    assert capped.sum() == 20 and not (capped & ~share).any()  # a subset of the share
    # the same 20 whatever the order of the documents
    back = heldout_mask(ids[::-1], 0.25, cap=20)[::-1]
    assert capped.tolist() == back.tolist()
    assert heldout_mask(ids, 0.25, cap=1000).tolist() == share.tolist()  # under the cap
    assert heldout_mask(ids, 7, cap=5).sum() == 5


def test_hash_sample_keeps_the_same_documents_in_any_order():
    some = hash_sample(DOCS, 10)
    assert len(some) == 10 and [d for d in DOCS if d in some] == some  # order kept
    assert set(hash_sample(DOCS[::-1], 10)) == set(some)
    assert hash_sample(DOCS, None) == DOCS == hash_sample(DOCS, len(DOCS))


def test_run_mine_writes_the_folder_and_keeps_heldout_documents_out_of_training(tmp_path, corpus):
    _, mined = _mine(tmp_path / "ws", corpus, *BM25_ONLY)
    folder = Path(mined.path)
    assert folder.parent.name == "mined" and folder.name == mined.key
    train = pq.read_table(folder / "train.parquet").to_pylist()
    held = pq.read_table(folder / "heldout.parquet").to_pylist()
    docs = pq.read_table(folder / "docs.parquet").to_pydict()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert mined.docs == len(docs["doc_id"]) == 30 == manifest["docs"]
    assert manifest["heldout"]["docs"] == 6 and mined.heldout == len(held) > 0
    assert sum(mined.counts.values()) == len(train) == manifest["examples"]
    assert set(mined.counts) == {"title_text", "ict", "crops", "neighbours", "pseudo_sentence",
                                 "pseudo_keywords"}
    held_ids = {r["doc_id"] for r in held}
    assert len(held_ids) == len(held)  # one query per held-out document
    heldout_docs = set(np.asarray(docs["doc_id"])[heldout_mask(docs["doc_id"], 6)])
    assert held_ids <= heldout_docs
    assert not heldout_docs & {r["doc_id"] for r in train}
    by_id = {d.doc_id: d for d in DOCS}
    held_texts = {by_id[d].text for d in heldout_docs}
    # with BM25 scores an example whose document BM25 does not rank among its candidates gets
    # none (no evidence that any candidate is less relevant); most do get one
    assert sum(bool(r["negatives"]) for r in train) > len(train) / 2
    assert manifest["negatives"]["negatives"] == sum(len(r["negatives"]) for r in train)
    for r in train:
        # never the positive's document; never a held-out document
        assert all(n not in by_id[r["doc_id"]].full for n in r["negatives"])
        assert not any(n in t for n in r["negatives"] for t in held_texts)
    assert manifest["pseudo_queries"]["kept"] <= manifest["pseudo_queries"]["made"]
    # training reads the rows as (anchor, positive, *negatives)
    ocfg = objective_config("mnrl", data={"source": "mined"})
    examples = load_examples(ocfg, None, mined)
    assert examples[0] == (train[0]["anchor"], train[0]["positive"], *train[0]["negatives"])


def test_mining_is_deterministic_by_seed(tmp_path, corpus):
    _, a = _mine(tmp_path / "a", corpus, *BM25_ONLY)
    _, b = _mine(tmp_path / "b", corpus, *BM25_ONLY)
    _, c = _mine(tmp_path / "c", corpus, *BM25_ONLY, "adapt.seed=1")
    rows = [pq.read_table(Path(m.path) / "train.parquet").to_pylist() for m in (a, b, c)]
    assert rows[0] == rows[1]  # (keys differ: each workspace has its own snapshot name)
    assert rows[0] != rows[2]


def test_mining_with_the_encoder(tmp_path, corpus):
    model = tiny_bert(tmp_path / "bert", [d.full for d in DOCS])
    extra = [f"model.init={model}", "tokenizer.source=model", "adapt.negatives.per_example=2",
             "adapt.pseudo_queries.filter=either", "adapt.negatives.sources=[bm25,encoder]"]
    _, mined = _mine(tmp_path / "ws", corpus, *extra, model_dir=model)
    manifest = json.loads((Path(mined.path) / "manifest.json").read_text())
    assert manifest["pseudo_queries"]["filter"] == "either" and manifest["model"] == str(model)
    train = pq.read_table(Path(mined.path) / "train.parquet").to_pylist()
    by_id = {d.doc_id: d for d in DOCS}
    assert any(len(r["negatives"]) == 2 for r in train)
    for r in train:
        assert all(n not in by_id[r["doc_id"]].full for n in r["negatives"])


def test_encoder_mining_needs_a_pretrained_model(tmp_path):
    with pytest.raises(ConfigError, match="adapt.pseudo_queries.filter"):
        load_config(TINY, ["evaluate.pseudo=true", "adapt.pseudo_queries.filter=either"])
    load_config(TINY, ["evaluate.pseudo=true", *BM25_ONLY])  # BM25 alone needs no model
    load_config(TINY, ["evaluate.pseudo=true"])  # the defaults mine with BM25 alone
