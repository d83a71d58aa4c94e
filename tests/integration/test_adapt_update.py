"""The continual update of configs/adapt-domain.yaml, in process: the champion learned its corpus
from mined examples, so the update mines the new documents (with earlier ones replayed) for the
same MNRL objective, and the gate judges it by the label-free measure on both domains. A tiny
BERT stands in for MiniLM and a few steps for the recipe's 200."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from ctxvec.config import load_config
from ctxvec.continual.plan import UpdatePlan, split_domains
from ctxvec.continual.replay import replay_count
from ctxvec.stages import run_continual, run_pipeline
from tests.adapt_corpus import documents
from tests.helpers import REPO, tiny_bert

RECIPE = REPO / "configs" / "adapt-domain.yaml"
SMALL = ["train.steps=4", "train.lr=1e-3", "train.batch_size=8", "train.seq_len=64",
         "train.objectives.0.batch_size=8", "train.warmup_steps=1", "train.log_every=2",
         "train.checkpoint_every=4", "evaluate.sts=null", "evaluate.batch_size=32",
         "embed.words.enabled=false", "adapt.heldout_docs=6", "continual.heldout_every=4",
         "adapt.negatives.per_example=1"]  # the recipe's are off; the update mines them if asked


def _corpus(path: Path, prefix: str, n: int, seed: int) -> tuple[Path, list[str]]:
    """``n`` BEIR-style records whose ids start with ``prefix`` (two corpora never share one)."""
    docs = [{**d, "_id": f"{prefix}{i:03d}"} for i, d in enumerate(documents(n, seed))]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path, [f"{d['title']} {d['text']}" for d in docs]


def test_update_mines_new_and_replayed_documents_and_gates_on_pseudo_queries(tmp_path,
                                                                             workspace):
    ws = workspace
    old, old_texts = _corpus(tmp_path / "old.jsonl", "o", 40, 0)
    new, new_texts = _corpus(tmp_path / "new.jsonl", "n", 32, 1)
    model = tiny_bert(tmp_path / "bert", old_texts + new_texts)
    base = [f"model.init={model}", *SMALL]
    first = run_pipeline(load_config(RECIPE, [f"ingest.sources=[{old}]", *base]), ws)
    assert first["champion"] == "1" and first["mine"]["heldout"] > 0

    cfg = load_config(RECIPE, [f"ingest.sources=[{old},{new}]", *base])
    out = run_continual(cfg, ws)
    plan = UpdatePlan(**out["plan"])
    assert plan.new_docs == 32 and plan.old_docs == 40 and plan.parent_version == "1"

    # training: MNRL on examples mined from the new documents and from replayed earlier ones
    run_dir = ws.runs / f"continual-{plan.key}"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    data = manifest["data"]
    assert data["mined_new"] > 0 and data["mined_replay"] > 0
    assert data["mined_docs_replay"] == replay_count(data["mined_docs_new"], 0.5)
    assert manifest["steps"] == 4
    mined = Path(manifest["mined"])
    assert mined == ws.root / "mined" / f"update-{plan.key}"
    rows = pq.read_table(mined / "train.parquet").to_pylist()
    assert len(rows) == data["mined_new"] + data["mined_replay"] == \
        sum(manifest["mined_counts"].values())
    domains = split_domains(cfg, plan)
    assert data["mined_docs_new"] == len(domains.new_train)
    ids = {r["doc_id"] for r in rows}
    assert ids <= domains.new_train.keys() | domains.old_train.keys()
    assert not ids & (domains.new_heldout.keys() | domains.old_heldout.keys())  # the gate's
    assert "title_text" in manifest["mined_counts"]  # the documents kept their titles
    assert any(r["negatives"] for r in rows)

    # the gate: the label-free measure on the new domain, and on the old one within tolerance
    gate = out["gate"]
    assert gate["new_metric"] == "new.pseudo_ndcg_at_10"
    kinds = {c["metric"]: c["kind"] for c in gate["checks"]}
    assert kinds["old.pseudo_ndcg_at_10"] == kinds["old.pseudo_mrr_at_10"] == "old-domain"
    assert "unmeasured" not in kinds.values()  # evaluate.pseudo: measured per domain instead
    for metrics in (out["champion_metrics"], out["challenger_metrics"]):
        for m in ("new.pseudo_ndcg_at_10", "old.pseudo_ndcg_at_10"):
            assert 0 <= metrics[m] <= 1
    # the challenger learned something of the new domain: the figures moved (which way, on a
    # random tiny BERT, is not what this test is about)
    assert out["champion_metrics"]["new.pseudo_ndcg_at_10"] != \
        out["challenger_metrics"]["new.pseudo_ndcg_at_10"]
    assert out["status"] == ("promoted" if gate["promote"] else "rejected")
