"""The label-free evaluation: held-out pseudo-queries searched over the mined documents, with
nDCG@10 and MRR@10 checked by hand on a tiny case, and its row in run_evaluate."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctxvec.artifacts import MinedData, TrainedModel
from ctxvec.config import load_config
from ctxvec.errors import DataFormatError
from ctxvec.evaluate.pseudo import evaluate_pseudo, pseudo_metrics
from ctxvec.evaluate.run import run_evaluate
from ctxvec.model.encoder import Encoder
from tests.helpers import TINY, tiny_bert


def test_metrics_by_hand():
    # query 0 finds its document first, query 1 third, query 2 not in the top 10
    ranked = {"pq:0": ["a", "b", "c"], "pq:1": ["a", "c", "b"],
              "pq:2": [f"x{i}" for i in range(10)] + ["c"]}
    m = pseudo_metrics(ranked, ["a", "b", "c"])
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 0) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["n_queries"] == 3


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
    assert m == {"ndcg@10": pytest.approx(1.0), "mrr@10": pytest.approx(1.0), "n_queries": 2}
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
