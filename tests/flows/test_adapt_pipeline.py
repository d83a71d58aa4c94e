"""configs/adapt-domain.yaml end to end, as a user runs it on a BEIR-style corpus.jsonl: the mine
stage, MNRL on the mined pairs, the label-free evaluation, register, embed, index, promote. A
tiny BERT stands in for MiniLM so that it takes seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.adapt_corpus import documents, write_corpus
from tests.helpers import REPO, run_cli, tiny_bert

RECIPE = REPO / "configs" / "adapt-domain.yaml"


@pytest.mark.slow  # a Prefect flow run, MLflow and FAISS: over a minute on a loaded 2-core CPU
def test_adapt_domain_recipe_mines_trains_evaluates_and_promotes(tmp_path):
    corpus = write_corpus(tmp_path / "beir" / "corpus.jsonl", n=60)
    model = tiny_bert(tmp_path / "bert", [f"{d['title']} {d['text']}" for d in documents(60)])
    home = tmp_path / "home"
    proc = run_cli(
        home, "run", "--config", str(RECIPE), "--json",
        "--set", f"ingest.sources=[{corpus}]", "--set", f"model.init={model}",
        "--set", "train.steps=4", "--set", "train.batch_size=8", "--set", "train.seq_len=64",
        "--set", "train.objectives.0.batch_size=8", "--set", "train.warmup_steps=1",
        "--set", "train.log_every=2", "--set", "train.checkpoint_every=4",
        "--set", "evaluate.sts=null", "--set", "adapt.heldout_docs=8",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(proc.stdout)

    mine = s["mine"]
    folder = Path(mine["path"])
    assert folder.parent == home / "mined" and mine["docs"] == 60
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"] == mine["counts"] and manifest["heldout"]["docs"] == 8
    assert mine["heldout"] == manifest["heldout"]["queries"] > 0
    train_rows = pq.read_table(folder / "train.parquet").num_rows
    assert train_rows == sum(mine["counts"].values()) == manifest["examples"] > 100
    assert manifest["negatives"]["negatives"] == 0  # the recipe trains on in-batch negatives

    run_dir = Path(s["train"]["run_dir"])
    train_manifest = json.loads((run_dir / "manifest.json").read_text())
    assert train_manifest["mined"] == mine["path"] and train_manifest["steps"] == 4
    assert train_manifest["mined_counts"] == mine["counts"]
    losses = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [2, 4]

    metrics = s["evaluate"]["metrics"]
    assert 0 <= metrics["pseudo_ndcg_at_10"] <= 1 and 0 <= metrics["pseudo_mrr_at_10"] <= 1
    assert s["model"]["version"] == "1" == s["champion"]
    assert s["index"]["count"] >= 60 and s["embeddings"]["docs"] == 60
