"""The tiny recipe end to end through the real Prefect flow, MLflow on SQLite and FAISS.

The first run goes through the CLI exactly as a user types it (a fresh process, Prefect's
ephemeral local server: the embedded default the README's commands use); the second runs the
flow in-process, reporting to the session's Prefect server (tests/conftest.py), on the same
workspace, which must register version 2, move ``champion`` and build a separate index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctxvec.ingest.corpus import doc_files, iter_corpus

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"


def ctxvec(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env["CTXVEC_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-m", "ctxvec.cli", *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ctxvec {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("ws") / "home"
    home.mkdir()  # an empty folder, as the contract says
    proc = ctxvec(home, "run", "--config", str(TINY), "--json")
    summary = json.loads(proc.stdout)  # stdout holds exactly one JSON object
    return home, summary


def test_snapshot(first_run):
    home, s = first_run
    snap = s["snapshot"]
    docs = pa.concat_tables(pq.read_table(f) for f in doc_files([snap["path"]]))
    assert docs.column_names == ["doc_id", "text", "title", "source", "content_hash",
                                 "ingested_at", "snapshot"]
    assert docs.num_rows == snap["kept"] == 150  # ingest.max_docs in tiny.yaml
    assert len(set(docs.column("doc_id").to_pylist())) == 150
    assert snap["filtered"] > 0  # wikiextractor stubs are filtered, and recorded:
    rejected = (Path(snap["path"]) / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) == (snap["filtered"] + snap["quarantined"] + snap["duplicates"]
                             + snap["near_duplicates"])
    assert snap["read"] == len(rejected) + snap["kept"] + snap["deferred"]
    manifest = json.loads((Path(snap["path"]) / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 150 and manifest["snapshot"] == snap["snapshot_id"]
    assert Path(snap["path"]).parent == home / "snapshots"


def test_tokenizer_and_training_outputs(first_run):
    _, s = first_run
    tok = Path(s["tokenizer"]["path"])
    assert (tok / "tokenizer.json").is_file() and s["tokenizer"]["kind"] == "wordpiece"
    run_dir = Path(s["train"]["run_dir"])
    model_dir = Path(s["train"]["model_dir"])
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("*.pt"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["steps"] == 12 and manifest["tokenizer_sha256"] == s["tokenizer"]["sha256"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    history = [r for r in rows if "loss" in r]
    assert [h["step"] for h in history] == [4, 8, 12]
    assert all(np.isfinite(h["loss"]) for h in history)
    evals = [r for r in rows if "eval/eval_loss" in r]  # the held-out MLM loss at the end
    assert [e["step"] for e in evals] == [12] and np.isfinite(evals[0]["eval/eval_loss"])
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step-00000006", "step-00000012"]  # checkpoint_every: 6
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert "mlm_perplexity" in evaluation["metrics"]
    assert "sts_spearman" in evaluation["metrics"] or "sts" in evaluation["skipped"]


def test_registry_version_alias_and_tags(first_run):
    home, s = first_run
    from mlflow import MlflowClient

    db = f"sqlite:///{home / 'mlflow.db'}"
    # registry_uri too: an earlier in-process run has set mlflow's process-wide registry URI
    client = MlflowClient(tracking_uri=db, registry_uri=db)
    mv = client.get_model_version_by_alias("ctxvec-encoder", "champion")
    assert str(mv.version) == "1" == s["model"]["version"] == s["champion"]
    tags = mv.tags
    assert tags["data_snapshot"] == s["snapshot"]["snapshot_id"]
    assert tags["tokenizer_hash"] == s["tokenizer"]["sha256"]
    assert tags["dim"] == "32" and tags["index_uri"] == s["index"]["path"]
    run = client.get_run(s["model"]["run_id"])
    assert run.data.params["train.steps"] == "12"
    # what train.precision: auto resolved to on this CPU (bf16 only with bf16 units)
    from ctxvec.model.encoder import cpu_has_bf16
    assert run.data.params["train.precision_resolved"] == ("bf16" if cpu_has_bf16() else "fp32")
    assert "eval/mlm_perplexity" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 3
    assert (home / "mlartifacts").is_dir() and not (REPO / "mlruns").exists()


def test_embeddings_and_index(first_run):
    _, s = first_run
    shards = sorted(Path(s["embeddings"]["path"]).glob("part-*.parquet"))
    assert shards, "the embeddings folder holds Parquet shards"
    emb = pa.concat_tables([pq.read_table(f) for f in shards])
    assert emb.column_names == ["doc_id", "chunk", "start", "end", "model_version", "vector"]
    vtype = emb.schema.field("vector").type
    assert vtype.list_size == 32 and str(vtype.value_type) == "float"
    assert emb.num_rows == s["embeddings"]["rows"] == s["index"]["count"]
    assert set(emb.column("model_version").to_pylist()) == {"1"}
    corpus_ids = {r["doc_id"] for b in iter_corpus(s["snapshot"]["corpus"]) for r in b.to_pylist()}
    assert set(emb.column("doc_id").to_pylist()) == corpus_ids
    vecs = np.stack(emb.column("vector").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    idx = Path(s["index"]["path"])
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["model_version"] == "1" and manifest["factory"] == "Flat"
    assert manifest["recall_at_10"] == 1.0 and manifest["count"] == emb.num_rows
    assert pq.read_table(idx / "ids.parquet").num_rows == emb.num_rows


def test_query_contract_and_own_text_comes_first(first_run):
    home, s = first_run
    assert len(s["sample_query"]["hits"]) == 5
    docs = [r for b in iter_corpus(s["snapshot"]["corpus"]) for r in b.to_pylist()]
    doc = max(docs[:40], key=lambda d: len(d["text"]))  # a long, distinctive document
    out = json.loads(ctxvec(home, "query", doc["text"][:300], "-k", "5", "--json").stdout)
    hits = out["hits"]
    assert len(hits) == 5
    assert hits[0]["doc_id"] == doc["doc_id"]
    assert all({"doc_id", "score", "text"} <= set(h) for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h["doc_id"] for h in hits}) == 5  # documents, not repeated chunks
    assert doc["text"].startswith(hits[0]["text"][:50])


def test_pyfunc_loads_in_a_fresh_process(first_run):
    home, s = first_run
    code = (
        "import json, sys, mlflow\n"
        f"mlflow.set_tracking_uri('sqlite:///{home / 'mlflow.db'}')\n"
        "m = mlflow.pyfunc.load_model('models:/ctxvec-encoder@champion')\n"
        "print(json.dumps(m.predict(['I saw a saw.', 'a football club'])))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=home)
    assert proc.returncode == 0, proc.stderr
    vecs = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]))
    from ctxvec.model.encoder import Encoder

    # The pyfunc serves as `ctxvec embed` and `query` do: precision auto (bf16 where fast).
    direct = Encoder.load(s["train"]["model_dir"], precision="auto").encode(
        ["I saw a saw.", "a football club"])
    assert vecs.shape == (2, 32)
    assert np.allclose(vecs, direct, atol=1e-5)


def test_second_run_in_process_moves_champion(first_run, prefect_client):
    home, s = first_run
    from ctxvec_flows.pipeline import pipeline

    # no evaluation compares the two: the gate would keep version 1, so promote always
    s2 = pipeline(str(TINY), ["train.steps=4", "evaluate.sts=null", "registry.promote=always"],
                  str(home))
    # The first run stopped at ingest.max_docs=150, so the source file was not complete: the
    # second ingest reads it again, skips the 150 it has, and adds the next 150.
    snap2 = s2["snapshot"]
    assert snap2["created"] and snap2["kept"] == 150 and snap2["duplicates"] >= 150
    assert snap2["corpus_docs"] == 300 and snap2["corpus"][0] == s["snapshot"]["path"]
    assert s2["embeddings"]["docs"] == 300
    assert s2["model"]["version"] == "2" and s2["champion"] == "2"
    assert s2["previous_champion"] == "1"
    assert s2["index"]["path"] != s["index"]["path"]  # one index per model version
    assert json.loads((Path(s2["index"]["path"]) / "manifest.json").read_text())[
        "model_version"] == "2"
    assert s2["evaluate"]["skipped"]["sts"].startswith("evaluate.sts is not set")
    out = json.loads(ctxvec(home, "query", "a football club", "-k", "3", "--json").stdout)
    assert len(out["hits"]) == 3
    # the first version is still addressable, with its own index
    old = json.loads(ctxvec(home, "query", "a football club", "-k", "3", "--model",
                            "models:/ctxvec-encoder/1", "--json").stdout)
    assert len(old["hits"]) == 3
