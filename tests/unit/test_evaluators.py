"""Retrieval, WiC, context vectors and pseudo-perplexity on toy data and a tiny real BERT."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxvec.errors import DataFormatError, UserInputError
from ctxvec.evaluate.perplexity import evaluate_perplexity, read_passages
from ctxvec.evaluate.retrieval import (
    evaluate_retrieval,
    exact_search,
    index_search,
    rank_beir,
    read_beir,
    retrieval_metrics,
)
from ctxvec.evaluate.wic import best_threshold, evaluate_wic, read_wic
from ctxvec.index.factory import index_candidates
from ctxvec.model.context_vectors import SpanError, span_vectors, word_span
from ctxvec.model.encoder import Encoder
from tests.helpers import tiny_bert

SENTENCES = [
    "I saw a saw in the shed.",
    "The river flows to the sea past the old town.",
    "She reads a book about boats and rivers.",
    "He nailed boards across the windows of the house.",
    "A bank by the river, a bank for money.",
    "Paris is the capital of France and a large city.",
    "Cats sleep in the sun while dogs play outside.",
    "The saw was sharp and the wood was soft.",
]


def _tiny_bert(folder: Path, with_head: bool) -> Path:
    return tiny_bert(folder, SENTENCES, with_head=with_head)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert"), with_head=True)


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> Encoder:
    return Encoder.load(tiny_dir, device="cpu")


# --- retrieval metrics, by hand -------------------------------------------------------------


def test_retrieval_metrics_match_hand_computed_values():
    qrels = {
        "q1": {"a": 1},  # relevant doc at rank 3
        "q2": {"b": 2, "c": 1, "x": 0},  # graded; x is judged but not relevant
        "q3": {"d": 1, "missing": 1},  # one of two relevant docs can never be found
    }
    ranked = {
        "q1": ["z", "y", "a", "w"],
        "q2": ["c", "x", "b"],
        "q3": ["d"],
    }
    m = retrieval_metrics(ranked, qrels)
    ndcg_q1 = (1 / math.log2(4)) / 1.0
    ndcg_q2 = (1 / math.log2(2) + 2 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    ndcg_q3 = 1.0 / (1 + 1 / math.log2(3))  # the absent doc still counts in the ideal DCG
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + ndcg_q3) / 3)
    assert m["recall@100"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["mrr@10"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert m["n_queries"] == 3


def test_retrieval_metrics_respect_the_cutoffs():
    # relevant doc at rank 11: outside nDCG@10 and MRR@10, inside Recall@100
    ranked = {"q": [f"n{i}" for i in range(10)] + ["rel"]}
    m = retrieval_metrics(ranked, {"q": {"rel": 1}})
    assert m["ndcg@10"] == 0.0 and m["mrr@10"] == 0.0 and m["recall@100"] == 1.0
    # at rank 101 it is outside Recall@100 too; a query with no run scores 0
    ranked = {"q": [f"n{i}" for i in range(100)] + ["rel"]}
    m = retrieval_metrics(ranked, {"q": {"rel": 1}, "other": {"rel": 1}})
    assert m["recall@100"] == 0.0 and m["n_queries"] == 2


def test_exact_search_ranks_by_inner_product_and_skips_self_hits():
    docs = np.eye(4, dtype=np.float32)  # d0..d3
    queries = np.array([[0.1, 0.9, 0.5, 0.0], [0.0, 0.2, 0.3, 1.0]], dtype=np.float32)
    ranked = exact_search(queries, docs, ["d1", "q2"], ["d0", "d1", "d2", "d3"], k=3)
    assert ranked["d1"] == ["d2", "d0", "d3"]  # d1 is the query itself: skipped, not cut
    assert ranked["q2"] == ["d3", "d2", "d1"]


def test_index_search_ranks_exactly_like_exact_search_even_with_ties():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(500, 16)).astype(np.float32)
    docs[250:300] = docs[200:250]  # duplicated documents: tied scores everywhere
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[rng.choice(500, 60, replace=False)] + 0.1 * rng.normal(size=(60, 16))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    doc_ids = [f"d{i}" for i in range(500)]
    query_ids = [f"d{i}" if i % 2 else f"q{i}" for i in range(60)]  # some are their own docs
    exact = exact_search(queries, docs, query_ids, doc_ids, k=100)
    assert exact == index_search(queries, docs, query_ids, doc_ids, k=100,
                                 candidates=index_candidates("Flat"))
    # An approximate index is allowed to differ, and it does through the same code path.
    approx = index_search(queries, docs, query_ids, doc_ids, k=100,
                          candidates=index_candidates("IVF16,Flat"))
    assert all(0 < len(v) <= 100 and set(v) <= set(doc_ids) for v in approx.values())


def _write_beir(folder: Path, corpus, queries, qrels_lines) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "test.tsv").write_bytes(
        ("query-id\tcorpus-id\tscore\r\n" + "".join(f"{x}\r\n" for x in qrels_lines)).encode())
    return folder


def test_evaluate_retrieval_end_to_end_with_a_tiny_bert(tiny, tmp_path, caplog):
    q1 = "a quiet river near an old shed"
    corpus = [{"_id": f"d{i}", "title": "", "text": s} for i, s in enumerate(SENTENCES)]
    corpus += [
        {"_id": "q1", "title": "", "text": q1},  # ArguAna-style: the query is in the corpus
        {"_id": "rel1", "title": "", "text": q1},  # same text, another id: the relevant one
        {"_id": "t", "title": "Boats", "text": "and rivers."},
    ]
    queries = [{"_id": "q1", "text": q1}, {"_id": "q2", "text": "cats and dogs"},
               {"_id": "q3", "text": "no judgments for this one"}]
    folder = _write_beir(tmp_path / "beir", corpus, queries,
                         ["q1\trel1\t1", "q2\td6\t1", "q2\tgone\t1"])
    with caplog.at_level(logging.WARNING, logger="ctxvec.evaluate.retrieval"):
        data = read_beir(folder)
    assert "1 qrels point at doc ids absent" in caplog.text
    assert data.query_ids == ["q1", "q2"]  # q3 has no qrels
    assert data.doc_texts[-1] == "Boats and rivers."  # title + " " + text

    ranked = rank_beir(tiny, data, batch_size=4)
    assert all(qid not in hits for qid, hits in ranked.items())
    assert ranked["q1"][0] == "rel1"  # identical text: cosine 1, first once q1 is skipped
    assert len(ranked["q1"]) == len(corpus) - 1 and len(ranked["q2"]) == len(corpus)
    m = evaluate_retrieval(tiny, data, batch_size=4)
    assert set(m) == {"ndcg@10", "recall@100", "mrr@10", "n_queries"}
    assert m["n_queries"] == 2
    assert m["recall@100"] == pytest.approx((1 + 0.5) / 2)  # "gone" can never be found
    assert m["mrr@10"] >= 0.5 and 0.5 <= m["ndcg@10"] < 1.0


@pytest.mark.parametrize(
    "files, message",
    [
        ({"queries.jsonl": "", "qrels/test.tsv": "q\td\t1\n"}, "corpus.jsonl"),
        ({"corpus.jsonl": '{"_id": "d", "text": "x"}\n', "queries.jsonl": "",
          "qrels/test.tsv": "query-id\tcorpus-id\tscore\nq\td\n"}, "expected 3"),
        ({"corpus.jsonl": "{not json\n", "queries.jsonl": "",
          "qrels/test.tsv": "q\td\t1\n"}, "not valid JSON"),
        ({"corpus.jsonl": '{"_id": "d"}\n', "queries.jsonl": "",
          "qrels/test.tsv": "q\td\t1\n"}, "missing field 'text'"),
        ({"corpus.jsonl": '{"_id": "d", "text": "x"}\n', "queries.jsonl": "",
          "qrels/test.tsv": "q\td\tyes\n"}, "is not a number"),
    ],
)
def test_read_beir_reports_bad_files(tmp_path, files, message):
    (tmp_path / "qrels").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DataFormatError, match=message):
        read_beir(tmp_path)


# --- WiC ------------------------------------------------------------------------------------


def test_best_threshold_scans_every_cut():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2])
    labels = np.array([False, True, False, True, False, False])
    t, acc = best_threshold(scores, labels)
    # sorted: .1F .2F .35F .4T .7F .8T -> best cut between .35 and .4 (5 of 6 right)
    assert t == pytest.approx(0.375) and acc == pytest.approx(5 / 6)
    assert ((scores >= t) == labels).mean() == pytest.approx(acc)
    # all true / all false are candidates too
    assert best_threshold(np.array([0.5, 0.6]), np.array([True, True])) == (0.5, 1.0)
    t, acc = best_threshold(np.array([0.5, 0.6]), np.array([False, False]))
    assert t > 0.6 and acc == 1.0
    # tied scores cannot be split: either both true or both false
    t, acc = best_threshold(np.array([0.3, 0.3, 0.9]), np.array([True, False, True]))
    assert acc == pytest.approx(2 / 3) and t <= 0.3


def test_word_span_maps_whitespace_indices_to_characters():
    s = "He nailed  boards across the windows ."
    assert s[slice(*word_span(s, 2))] == "boards"
    assert s[slice(*word_span(s, 6))] == "."
    with pytest.raises(SpanError, match="out of range"):
        word_span(s, 7)


def _write_wic(folder: Path, split: str, rows: list[tuple[str, ...]], gold: list[str]) -> None:
    (folder / split).mkdir(parents=True)
    (folder / split / f"{split}.data.txt").write_text("".join("\t".join(r) + "\n" for r in rows))
    (folder / split / f"{split}.gold.txt").write_text("".join(g + "\n" for g in gold))


def test_evaluate_wic_fits_the_threshold_on_train(tiny, tmp_path):
    same = ("saw", "N", "3-1", "I saw a saw .", "The saw was sharp .")
    self_pair = ("river", "N", "1-1", "The river flows .", "The river flows .")
    rows = [self_pair, same, ("bank", "N", "1-7", "A bank by the river , a bank for money .",
                              "A bank by the river , a bank for money .")]
    _write_wic(tmp_path, "train", rows * 2, ["T", "F", "F"] * 2)
    _write_wic(tmp_path, "dev", [self_pair, same], ["T", "F"])
    r = evaluate_wic(tiny, tmp_path, "dev", batch_size=2)
    assert set(r) == {"accuracy", "threshold", "n", "train_accuracy"} and r["n"] == 2
    # the identical occurrence has cosine 1, strictly above every other: train is separable
    assert r["train_accuracy"] == 1.0 and r["accuracy"] == 1.0 and r["threshold"] < 1.0
    layer0 = evaluate_wic(tiny, tmp_path, "train", layer=0)
    assert layer0["accuracy"] == layer0["train_accuracy"] and layer0["n"] == 6


def test_read_wic_reports_bad_files(tmp_path):
    with pytest.raises(DataFormatError, match="WiC file not found"):
        read_wic(tmp_path, "dev")
    _write_wic(tmp_path, "dev", [("saw", "N", "3-1", "I saw a saw .", "The saw .")], ["T", "F"])
    with pytest.raises(DataFormatError, match="1 pairs"):
        read_wic(tmp_path, "dev")
    (tmp_path / "dev" / "dev.data.txt").write_text("saw\tN\t9-1\tI saw .\tThe saw .\n")
    with pytest.raises(DataFormatError, match="dev.data.txt:1: word index 9"):
        read_wic(tmp_path, "dev")


# --- context vectors ------------------------------------------------------------------------


def test_span_vectors_differ_by_context_and_repeat_exactly(tiny):
    s = "I saw a saw"
    first, second = (2, 5), (8, 11)
    assert s[slice(*first)] == s[slice(*second)] == "saw"
    v = span_vectors(tiny, [s, s, s, "They saw it"], [first, second, first, (5, 8)])
    assert v.shape == (4, 32) and v.dtype == np.float32
    assert not np.allclose(v[0], v[1], atol=1e-3)  # same word, different context
    assert np.array_equal(v[0], v[2])  # same text and span: the same vector
    # the vector of a span is the mean of its subword tokens' last hidden states
    enc = tiny.tokenizer("They saw it", return_offsets_mapping=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = tiny.model(input_ids=enc["input_ids"]).last_hidden_state[0]
    pos = [i for i, (a, b) in enumerate(enc["offset_mapping"][0].tolist()) if a < 8 and b > 5
           and b > a]
    assert np.allclose(v[3], hidden[pos].mean(0).numpy(), atol=1e-5)
    # a chosen layer: 0 is the embedding output, not the last layer
    v0 = span_vectors(tiny, [s], [first], layer=0)
    assert not np.allclose(v0[0], v[0], atol=1e-3)
    with pytest.raises(UserInputError, match="layer 5 does not exist"):
        span_vectors(tiny, [s], [first], layer=5)
    with pytest.raises(SpanError, match="covers no token"):
        span_vectors(tiny, ["a  b"], [(1, 2)])


# --- pseudo-perplexity ----------------------------------------------------------------------


def test_read_passages_skips_blanks_and_headers(tmp_path):
    path = tmp_path / "wiki.raw"
    path.write_bytes(b" = Title = \r\n \r\n A first line .\r\n = = Section = = \r\nSecond.\r\n")
    assert read_passages(path) == ["A first line .", "Second."]


def test_pseudo_perplexity_on_a_tiny_bert(tiny_dir, tmp_path, caplog):
    path = tmp_path / "held_out.txt"
    path.write_text(" = Title = \n\n" + "\n".join(SENTENCES[:4]) + "\n")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    counts = [len(tok(s, add_special_tokens=False)["input_ids"]) for s in SENTENCES[:4]]
    total = sum(counts)
    with caplog.at_level(logging.WARNING, logger="ctxvec.evaluate.perplexity"):
        full = evaluate_perplexity(tiny_dir, path, max_length=8, batch_size=7)
    assert "masked-LM head" not in caplog.text
    assert full["tokens"] == total and full["passages"] == 4
    assert 1.0 < full["pseudo_perplexity"] < 1e6 and math.isfinite(full["pseudo_perplexity"])
    # an untrained model is close to uniform over the vocabulary
    assert full["pseudo_perplexity"] == pytest.approx(len(tok), rel=0.5)
    cap = counts[0] + 3  # three tokens into the second passage
    capped = evaluate_perplexity(tiny_dir, path, max_tokens=cap, max_length=8)
    assert capped["tokens"] == cap and capped["passages"] == 2
    # batching does not change the figure
    again = evaluate_perplexity(tiny_dir, path, max_length=8, batch_size=64)
    assert again["pseudo_perplexity"] == pytest.approx(full["pseudo_perplexity"], rel=1e-5)


def test_pseudo_perplexity_warns_without_an_mlm_head(tmp_path, caplog):
    folder = _tiny_bert(tmp_path / "no-head", with_head=False)
    path = tmp_path / "t.txt"
    path.write_text(SENTENCES[0] + "\n")
    with caplog.at_level(logging.WARNING, logger="ctxvec.evaluate.perplexity"):
        a = evaluate_perplexity(folder, path)
    assert "no trained masked-LM head" in caplog.text
    b = evaluate_perplexity(folder, path)
    assert a == b  # the random head is seeded: the figure repeats


def test_pseudo_perplexity_matches_a_plain_loop_over_masked_copies(tiny_dir, tmp_path):
    """Parity with the definition: mask one token at a time, full forward, sum log p(token)."""
    from transformers import AutoTokenizer, BertForMaskedLM

    text = SENTENCES[1]
    path = tmp_path / "one.txt"
    path.write_text(text + "\n")
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    model = BertForMaskedLM.from_pretrained(str(tiny_dir)).eval()
    ids = tok(text, return_tensors="pt")["input_ids"][0]  # [CLS] ... [SEP]
    pll = 0.0
    with torch.inference_mode():
        for i in range(1, len(ids) - 1):
            masked = ids.clone()
            masked[i] = tok.mask_token_id
            logits = model(input_ids=masked[None]).logits[0, i]
            pll += torch.log_softmax(logits, -1)[ids[i]].item()
    expected = math.exp(-pll / (len(ids) - 2))
    got = evaluate_perplexity(tiny_dir, path, batch_size=5)
    assert got["tokens"] == len(ids) - 2
    assert got["pseudo_perplexity"] == pytest.approx(expected, rel=1e-4)
