"""``ctxvec eval retrieval --hybrid``: dense, BM25 and their fusion in one run, as users run it."""

from __future__ import annotations

import json
import math

import pytest

from ctxvec.evaluate.retrieval import evaluate_retrieval, read_beir
from ctxvec.model.encoder import Encoder
from tests.helpers import run_cli, tiny_bert
from tests.unit.test_eval_hybrid import DOCS, QUERIES, write_beir


def test_eval_retrieval_hybrid_reports_dense_bm25_and_fused(tmp_path):
    model = tiny_bert(tmp_path / "model", list(DOCS.values()) + list(QUERIES.values()))
    data = write_beir(tmp_path / "beir")
    proc = run_cli(tmp_path / "home", "eval", "retrieval", "--data", str(data), "--model",
                   str(model), "--hybrid", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # dense at the top level, as without --hybrid, and equal to it
    dense = evaluate_retrieval(Encoder.load(model, device="cpu"), read_beir(data))
    for key in ("ndcg@10", "recall@100", "mrr@10", "n_queries"):
        assert out[key] == pytest.approx(dense[key])
    assert out["rrf_k"] == 60 and out["search"] == "exact" and out["model"] == str(model)
    # BM25 does not depend on the model: q1 finds d1 first, q2 never finds d3
    assert out["bm25"]["ndcg@10"] == pytest.approx(0.5)
    assert out["bm25"]["mrr@10"] == pytest.approx(0.5)
    # fused: q1's d1 is first whatever the dense rank of d2 (1/(60 + r) + 1/61 > 1/61), so
    # nDCG is at least 1/2 from q1 alone
    assert out["hybrid"]["recall@100"] == pytest.approx(1.0)
    assert out["hybrid"]["ndcg@10"] >= 0.5 + 1 / (2 * math.log2(5)) - 1e-9

    # the text form, with query.rrf_k from a recipe
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("query:\n  rrf_k: 1\n")
    proc = run_cli(tmp_path / "home", "eval", "retrieval", "--data", str(data), "--model",
                   str(model), "--hybrid", "-c", str(recipe))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "retrieval beir/test:"
    assert [line.split()[0] for line in lines[1:]] == ["dense", "bm25", "hybrid"]
    assert "bm25   ndcg@10 0.5000, recall@100 0.5000, mrr@10 0.5000 (n=2)" in lines[2]
