"""The label-free evaluation: held-out queries of every kind searched over the mined documents,
with nDCG@10 and MRR@10 checked by hand on tiny cases, and its row in run_evaluate."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctxvec.artifacts import MinedData, TrainedModel
from ctxvec.config import load_config
from ctxvec.errors import DataFormatError
from ctxvec.evaluate.pseudo import MIN_KIND_QUERIES, evaluate_pseudo, own_ranks, pseudo_metrics
from ctxvec.evaluate.run import run_evaluate
from ctxvec.model.encoder import Encoder
from tests.helpers import TINY, tiny_bert


def test_metrics_by_hand():
    # query 0 finds its document first, query 1 third, query 2 not in the top 10
    m = pseudo_metrics(np.array([1, 3, 11]), ["a"] * 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 0) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["n_queries"] == 3 and m["ndcg@10/a"] == m["ndcg@10"] and m["n/a"] == 3


def test_kinds_weigh_the_same_whatever_their_counts():
    # 40 title queries all first, 20 crop queries all missed: the mean of the kinds is 0.5,
    # not the 2/3 of the pooled queries; a kind asked fewer than MIN_KIND_QUERIES times is
    # reported but not averaged
    ranks = np.array([1] * 40 + [50] * 20 + [1] * (MIN_KIND_QUERIES - 1))
    kinds = ["title"] * 40 + ["crop"] * 20 + ["keywords"] * (MIN_KIND_QUERIES - 1)
    m = pseudo_metrics(ranks, kinds)
    assert m["ndcg@10"] == pytest.approx(0.5) and m["mrr@10"] == pytest.approx(0.5)
    assert m["ndcg@10/keywords"] == 1.0 and m["n/keywords"] == MIN_KIND_QUERIES - 1
    assert m["se"] == pytest.approx(0.0)  # every kind answered alike
    # too few of every kind: the queries are pooled
    assert pseudo_metrics(np.array([1, 50]), ["a", "b"])["ndcg@10"] == pytest.approx(0.5)


def test_own_document_is_ranked_by_its_target():
    # one query, two documents; its own document (column 0) scores 0.1 as a whole but 0.9 as
    # its target: rank 1; with a worse target it falls below the other document
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    docs = np.array([[0.1, 0.99], [0.5, 0.86]], dtype=np.float32)
    assert own_ranks(q, docs, np.array([0]), np.array([[0.9, 0.43]])).tolist() == [1]
    assert own_ranks(q, docs, np.array([0]), np.array([[0.2, 0.98]])).tolist() == [2]


def _folder(tmp: Path, queries, relevant, doc_ids, texts) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"query": queries, "doc_id": relevant,
                             "signal": ["pseudo_sentence"] * len(queries)}),
                   tmp / "heldout.parquet")
    pq.write_table(pa.table({"doc_id": doc_ids, "text": texts}), tmp / "docs.parquet")
    return tmp


def test_evaluate_pseudo_searches_the_mined_documents(tmp_path):
    texts = ["red apples grow on trees in the orchard", "the train leaves the station at noon",
             "a violin concerto in three movements", "goals scored in the football final"]
    model = tiny_bert(tmp_path / "bert", texts)
    enc = Encoder.load(model)
    # each query is its document's own text: an encoder finds it first, whatever its weights
    folder = _folder(tmp_path / "mined", texts[:2], ["d0", "d1"], ["d0", "d1", "d2", "d3"],
                     texts)
    m = evaluate_pseudo(enc, folder)
    assert m["ndcg@10"] == pytest.approx(1.0) and m["mrr@10"] == pytest.approx(1.0)
    assert m["n_queries"] == 2 and m["se"] == pytest.approx(0.0)
    with pytest.raises(DataFormatError, match="no held-out pseudo-query"):
        evaluate_pseudo(enc, _folder(tmp_path / "empty", [], [], ["d0"], ["x"]))
    # a row of run_evaluate: on with evaluate.pseudo, its data the mined record's folder
    cfg = load_config(TINY, ["evaluate.pseudo=true", "evaluate.sts=null",
                             "adapt.pseudo_queries.filter=bm25", "adapt.negatives.sources=[bm25]"])
    trained = TrainedModel(str(tmp_path / "run"), str(model), 0, 0, None, None, None)
    (tmp_path / "run").mkdir()
    mined = MinedData(str(folder), "k", {"crops": 1}, 2, 4)
    report = run_evaluate(cfg, None, trained, mined)
    assert report.metrics["pseudo_ndcg_at_10"] == pytest.approx(1.0)
    assert report.metrics["pseudo_mrr_at_10"] == pytest.approx(1.0)
    assert "no mined data" in run_evaluate(cfg, None, trained).skipped["pseudo"]
    off = load_config(TINY, ["evaluate.sts=null"])
    assert run_evaluate(off, None, trained, mined).skipped["pseudo"].startswith(
        "evaluate.pseudo is not set")
