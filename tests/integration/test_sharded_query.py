"""``index.shards=3`` end to end: ``run_index`` writes one index per corpus shard and a manifest
listing them, and ``ctxvec query --json`` served by it answers exactly what the one-index build
(``index.shards=1``) of the same embeddings answers: text, document id and filtered queries.

Both indexes are built from the same embeddings of the same registered model, which points at
one or the other through its ``index_uri`` tag (what ``ctxvec query`` follows). The stages run
in process, as tests/integration/test_query.py does; the whole ``ctxvec run --set
index.shards=3`` is the ``slow`` test at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ctxvec.artifacts import Embeddings
from ctxvec.cli import app
from ctxvec.config import load_config
from ctxvec.embed.corpus import read_vectors, run_embed
from ctxvec.index.build import run_index
from ctxvec.registry import Registry
from ctxvec.workspace import Workspace
from tests.helpers import TINY, run_cli, train_tiny

QUERIES = ["a football club in England", "a village in Italy", "a politician and lawyer"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            mp.delenv(key)
        mp.setenv("CTXVEC_HOME", str(home))
        # what the encoder learnt does not matter here: 80 documents, 2 training steps
        cfg = load_config(TINY, ["evaluate.sts=null", "embed.words.enabled=false",
                                 "train.steps=2", "ingest.max_docs=80", "index.shards=3"])
        ws = Workspace(home).ensure()
        snap, tok, trained, report = train_tiny(cfg, ws)
        registry = Registry(ws)
        reg = registry.register(cfg, snap, tok, trained, report)
        emb = run_embed(cfg, ws, snap, trained.model_dir, reg.version)
        sharded = run_index(cfg, ws, emb)
        # the same embeddings as one index, in a folder of its own
        single_cfg = load_config(TINY, ["evaluate.sts=null", "index.shards=1"])
        single = run_index(single_cfg, Workspace(root / "single"), emb)
        registry.attach_index(reg.name, reg.version, sharded)
        registry.promote(reg.name, reg.version, "champion")
        yield {"home": home, "ws": ws, "reg": reg, "emb": emb, "sharded": sharded,
               "single": single, "docs": read_vectors(emb.path)[1].column("doc_id")}


def _query(built, index, *args: str) -> list[dict]:
    """``ctxvec query ARGS --json`` with the model version's index_uri pointing at ``index``."""
    Registry(built["ws"]).attach_index(built["reg"].name, built["reg"].version, index)
    result = CliRunner().invoke(app, ["query", *args, "--json"],
                                env={"CTXVEC_HOME": str(built["home"])})
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["hits"]


def test_manifest_lists_the_shards(built):
    folder = Path(built["sharded"].path)
    manifest = json.loads((folder / "manifest.json").read_text())
    shards = manifest["shards"]
    assert [s["shard"] for s in shards] == [0, 1, 2]
    assert sum(s["count"] for s in shards) == manifest["count"] == built["emb"].rows
    assert all(s["count"] > 0 and s["factory"] == "Flat" and s["recall_at_10"] == 1.0
               for s in shards)
    assert manifest["recall_at_10"] == 1.0 and manifest["factory"] == "Flat"
    assert manifest["build_device"] == "cpu" and all(s["build_device"] == "cpu" for s in shards)
    assert all((folder / "shards" / str(k) / "index.faiss").is_file() for k in range(3))
    assert not (folder / "index.faiss").exists()  # no whole-corpus copy beside the shards
    # one id map, BM25 and metadata over the whole corpus
    assert pq.read_table(folder / "ids.parquet").num_rows == built["emb"].rows
    single = json.loads((Path(built["single"].path) / "manifest.json").read_text())
    assert single["shards"] is None and single["build_device"] == "cpu"


def test_cli_query_sharded_equals_one_index(built):
    doc = built["docs"][5].as_py()
    cases = [[q, "-k", "5"] for q in QUERIES] + [
        ["--id", doc, "-k", "4"],
        [QUERIES[0], "-k", "3", "--filter", f"title={_title_of(built, doc)}"],
        [QUERIES[1], "-k", "4", "--hybrid"],
    ]
    for args in cases:
        sharded = _query(built, built["sharded"], *args)
        single = _query(built, built["single"], *args)
        assert [h["doc_id"] for h in sharded] == [h["doc_id"] for h in single], args
        assert [h["score"] for h in sharded] == pytest.approx([h["score"] for h in single],
                                                              abs=1e-6)
        assert [h["chunk"] for h in sharded] == [h["chunk"] for h in single]
    assert len(_query(built, built["sharded"], QUERIES[0], "-k", "5")) == 5


def test_cli_query_on_a_torch_exact_index_equals_the_flat_one(built, tmp_path):
    """``index.backend=torch-exact`` end to end: run_index stores the vectors, the Searcher opens
    them by their files and answers as FAISS Flat does (both exact)."""
    cfg = load_config(TINY, ["evaluate.sts=null", "index.backend=torch-exact"])
    exact = run_index(cfg, Workspace(tmp_path / "exact"), built["emb"])
    folder = Path(exact.path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["factory"] == exact.factory == "exact" and manifest["recall_at_10"] == 1.0
    assert manifest["nprobe"] is None and manifest["count"] == built["emb"].rows
    assert (folder / "exact_vectors.npy").is_file() and not (folder / "index.faiss").exists()
    doc = built["docs"][7].as_py()
    for args in ([QUERIES[2], "-k", "5"], ["--id", doc, "-k", "3"]):
        got = _query(built, exact, *args)
        want = _query(built, built["single"], *args)
        assert [h["doc_id"] for h in got] == [h["doc_id"] for h in want], args
        assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-5)


def _title_of(built, doc_id: str) -> str:
    ids = pq.read_table(Path(built["sharded"].path) / "ids.parquet", columns=["doc_id", "title"])
    return dict(zip(*(c.to_pylist() for c in ids.columns), strict=True))[doc_id]


@pytest.mark.slow
def test_ctxvec_run_with_three_shards_then_query(tmp_path, prefect_api):
    """The command a user types: ``ctxvec run --set index.shards=3``, then ``ctxvec query``."""
    home = tmp_path / "home"
    sets = ["evaluate.sts=null", "embed.words.enabled=false", "index.shards=3"]
    proc = run_cli(home, "run", "--config", str(TINY), *[a for s in sets for a in ("--set", s)],
                   "--json", prefect_api=prefect_api)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    manifest = json.loads((Path(out["index"]["path"]) / "manifest.json").read_text())
    assert len(manifest["shards"]) == 3 and out["sample_query"]["hits"]
    sharded = run_cli(home, "query", QUERIES[0], "-k", "5", "--json")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    # the same embeddings as one index: the version's index folder rebuilt with shards=1
    run_index(load_config(TINY, ["evaluate.sts=null"]), Workspace(home),
              Embeddings(**out["embeddings"]))
    single = run_cli(home, "query", QUERIES[0], "-k", "5", "--json")
    a, b = json.loads(sharded.stdout)["hits"], json.loads(single.stdout)["hits"]
    assert [h["doc_id"] for h in a] == [h["doc_id"] for h in b]
    assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], abs=1e-6)
