"""Index and query on a workspace built by the tiny recipe: the manifest, the Searcher (text,
id, vector, filters, hybrid, threads) and ``ctxvec query`` from outside.

The workspace is built by calling the pipeline's ``run_*`` stages in process (what the Prefect
flow calls, without starting a Prefect server), so the module costs seconds, not a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ctxvec.config import load_config
from ctxvec.embed.corpus import read_vectors, run_embed
from ctxvec.index.build import run_index
from ctxvec.index.id_map import chunk_ids
from ctxvec.ingest.corpus import iter_corpus
from ctxvec.registry import Registry
from ctxvec.serve.search import Searcher, SearchError
from ctxvec.workspace import Workspace
from tests.helpers import run_cli, train_tiny

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
REF = "models:/ctxvec-encoder@champion"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    home = tmp_path_factory.mktemp("query") / "home"
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            mp.delenv(key)
        mp.setenv("CTXVEC_HOME", str(home))
        # what the encoder learnt does not matter here: 2 training steps are enough
        cfg = load_config(TINY, ["evaluate.sts=null", "embed.words.enabled=false",
                                 "train.steps=2"])
        ws = Workspace(home).ensure()
        snap, tok, trained, report = train_tiny(cfg, ws)
        registry = Registry(ws)
        reg = registry.register(cfg, snap, tok, trained, report)
        emb = run_embed(cfg, ws, snap, trained.model_dir, reg.version)
        idx = run_index(cfg, ws, emb)
        registry.attach_index(reg.name, reg.version, idx)
        registry.promote(reg.name, reg.version, "champion")
        docs = {r["doc_id"]: r for b in iter_corpus(snap.corpus, ("doc_id", "text", "title",
                                                                  "source"))
                for r in b.to_pylist()}
        yield {"home": home, "cfg": cfg, "ws": ws, "emb": emb, "idx": idx, "docs": docs,
               "searcher": Searcher(ws, REF, cfg)}


def test_index_manifest_and_id_map(tiny):
    idx, emb = tiny["idx"], tiny["emb"]
    folder = Path(idx.path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["factory_requested"] == "auto" and manifest["factory"] == "Flat" == idx.factory
    assert manifest["recall_at_10"] == 1.0 and manifest["metric"] == "inner_product"
    assert manifest["count"] == emb.rows and manifest["dim"] == 32
    assert manifest["bm25"] is True and (folder / "bm25").is_dir()
    assert manifest["metadata"] == ["source", "title"] and manifest["model_version"] == "1"
    assert manifest["build_seconds"] >= 0 and manifest["embeddings"] == emb.path
    ids = pq.read_table(folder / "ids.parquet")
    assert ids.column_names == ["id", "doc_id", "chunk", "start", "end", "source", "title"]
    assert ids.num_rows == emb.rows
    # stable ids: a hash of (doc_id, chunk), not row numbers
    assert ids.column("id").to_pylist() == chunk_ids(ids.column("doc_id").to_pylist(),
                                                      ids.column("chunk").to_numpy()).tolist()
    titles = dict(zip(ids.column("doc_id").to_pylist(), ids.column("title").to_pylist(),
                      strict=False))
    assert all(titles[d] == tiny["docs"][d]["title"] for d in titles)


def test_run_index_auto_chooses_an_approximate_index_above_the_threshold(tiny, tmp_path):
    """The same embeddings, indexed with a low auto_exact_max: IVF, trained on a sample, its
    recall measured with the nprobe it records."""
    cfg = load_config(TINY, ["index.auto_exact_max=100", "index.train_sample=1000",
                             "index.nprobe=1000", "index.bm25=false", "index.recall_sample=100"])
    idx = run_index(cfg, Workspace(tmp_path / "other"), tiny["emb"])
    manifest = json.loads((Path(idx.path) / "manifest.json").read_text())
    n = tiny["emb"].rows  # 1000 training vectors / 39 per list -> 16 lists
    assert manifest["factory"] == idx.factory == "IVF16,Flat" and manifest["count"] == n
    assert manifest["nprobe"] == 16 and manifest["ef_search"] is None
    assert manifest["recall_at_10"] == 1.0  # every list probed: exhaustive
    assert manifest["bm25"] is False and not (Path(idx.path) / "bm25").exists()


def test_searcher_text_id_vector_and_filters(tiny):
    s, docs = tiny["searcher"], tiny["docs"]
    info = s.info()
    assert info["version"] == "1" and info["factory"] == "Flat" and info["bm25"] is True
    assert info["count"] == tiny["emb"].rows and info["metadata"] == ["source", "title"]

    doc = max(list(docs.values())[:40], key=lambda d: len(d["text"]))
    hits = s.search(doc["text"][:300], k=5)
    assert hits[0].doc_id == doc["doc_id"] and hits[0].title == doc["title"]
    assert hits[0].source == doc["source"] and len({h.doc_id for h in hits}) == 5

    # --id: neighbours of a stored document, itself left out, ranked like its chunks' vectors
    near = s.search_id(doc["doc_id"], k=5)
    assert len(near) == 5 and doc["doc_id"] not in {h.doc_id for h in near}
    assert [h.score for h in near] == sorted((h.score for h in near), reverse=True)

    # a stored chunk's vector finds that chunk first, with cosine 1
    vectors, meta = read_vectors(tiny["emb"].path)
    row = 7
    hit = s.search_vector(vectors[row], k=1)[0]
    assert hit.doc_id == meta.column("doc_id")[row].as_py() and hit.score == pytest.approx(1.0)
    assert hit.chunk == meta.column("chunk")[row].as_py()
    batched = s.search_vectors(vectors[:4], k=3)  # what the HTTP server's batcher calls
    single = [s.search_vector(v, k=3) for v in vectors[:4]]
    # the same hits; scores to float rounding (faiss may split a batch across threads otherwise)
    assert [[(h.doc_id, h.chunk, h.text) for h in hs] for hs in batched] == \
        [[(h.doc_id, h.chunk, h.text) for h in hs] for hs in single]
    np.testing.assert_allclose([[h.score for h in hs] for hs in batched],
                               [[h.score for h in hs] for hs in single], atol=1e-5)

    # filters: only documents with that title, whatever the query
    other = next(d for d in docs.values() if d["doc_id"] != doc["doc_id"] and d["title"])
    only = s.search(doc["text"][:300], k=5, filters={"title": other["title"]})
    assert {h.doc_id for h in only} == {d for d, r in docs.items()
                                        if r["title"] == other["title"]}
    assert s.search_id(doc["doc_id"], k=3, filters={"title": other["title"]})[0].doc_id \
        == other["doc_id"]
    assert s.search("anything", k=3, filters={"title": "no such title"}) == []


def test_snippets_in_memory_and_read_per_query_agree(tiny, monkeypatch):
    import ctxvec.serve.search as search_mod

    cached = tiny["searcher"]
    assert cached._snippets is not None
    monkeypatch.setattr(search_mod, "SNIPPET_CACHE_MAX", 0)  # past the cap: Parquet per query
    uncached = Searcher(tiny["ws"], REF, tiny["cfg"])
    assert uncached._snippets is None
    for text in ("a football club", "a river in Germany"):
        assert [h.to_dict() for h in cached.search(text, k=7)] == \
            [h.to_dict() for h in uncached.search(text, k=7)]
        assert [h.text for h in cached.search(text, k=3)] and \
            all(h.text for h in cached.search(text, k=3))


def test_searcher_hybrid_fuses_bm25(tiny):
    s, docs = tiny["searcher"], tiny["docs"]
    doc = next(d for d in docs.values() if len(d["title"]) > 6)
    hits = s.search(doc["title"], k=5, hybrid=True)
    assert 0 < len(hits) <= 5 and hits[0].score <= 2 / (s.rrf_k + 1)  # fusion scores
    assert doc["doc_id"] in {h.doc_id for h in hits}  # its title's words are in its text
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    only = s.search(doc["title"], k=5, hybrid=True, filters={"title": doc["title"]})
    assert {h.doc_id for h in only} == {doc["doc_id"]}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.search("   ", 5), "query text is empty"),
        (lambda s: s.search("x", 0), "k must be between 1 and 1000"),
        (lambda s: s.search("x", 1001), "k must be between 1 and 1000"),
        (lambda s: s.search_id("no-such-doc", 5), "unknown document id 'no-such-doc'"),
        (lambda s: s.search("x", 5, {"colour": "red"}), "unknown filter key 'colour'"),
        (lambda s: s.search_vector(np.ones(31), 5), "needs 32 dimensions"),
        (lambda s: s.search_vector(np.zeros(32), 5), "all zeros"),
    ],
)
def test_searcher_errors_are_clear(tiny, call, message):
    with pytest.raises(SearchError, match=message):
        call(tiny["searcher"])


def test_searcher_is_safe_from_threads(tiny):
    s = tiny["searcher"]
    texts = [d["text"][:200] for d in list(tiny["docs"].values())[:16]]
    alone = [[h.doc_id for h in s.search(t, 5)] for t in texts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda t: [h.doc_id for h in s.search(t, 5)], texts))
    assert together == alone


def _ctxvec(home: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(home, *args, timeout=300)


def test_cli_query_by_id_with_a_filter(tiny):
    docs = tiny["docs"]
    doc = next(iter(docs.values()))
    proc = _ctxvec(tiny["home"], "query", "--id", doc["doc_id"], "-k", "3", "--filter",
                   f"source={doc['source']}", "--json")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)["hits"]
    assert len(hits) == 3 and doc["doc_id"] not in {h["doc_id"] for h in hits}
    assert all({"doc_id", "score", "text", "title", "source"} <= set(h) for h in hits)
    assert all(h["source"] == doc["source"] for h in hits)


def test_cli_query_by_vector_file(tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ctxvec.cli import app

    vectors, meta = read_vectors(tiny["emb"].path)
    f = tmp_path / "q.npy"
    np.save(f, vectors[3:4])  # shape (1, D)
    monkeypatch.setenv("CTXVEC_HOME", str(tiny["home"]))
    result = CliRunner().invoke(app, ["query", "--vector-file", str(f), "-k", "2", "--json"])
    assert result.exit_code == 0, result.stderr
    hits = json.loads(result.stdout)["hits"]
    assert hits[0]["doc_id"] == meta.column("doc_id")[3].as_py()
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5) and len(hits) == 2
    (tmp_path / "q.txt").write_text(" ".join(map(str, vectors[3])))  # a text file of floats
    result = CliRunner().invoke(app, ["query", "--vector-file", str(tmp_path / "q.txt"),
                                      "-k", "1", "--json"])
    assert json.loads(result.stdout)["hits"][0]["doc_id"] == hits[0]["doc_id"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one of TEXT, --id DOC or --vector-file F"),
        (["hello", "--id", "x"], "(got TEXT, --id)"),
        (["--id", "x", "--hybrid"], "--hybrid needs TEXT"),
        (["hello", "--filter", "source"], "must look like KEY=VALUE"),
        (["--vector-file", "{tmp}/none.npy"], "vector file not found"),
        (["--vector-file", "{tmp}/words.txt"], "expected numbers"),
        (["--vector-file", "{tmp}/short.txt"], "needs 32 dimensions"),
        (["hello", "--filter", "colour=red"], "unknown filter key 'colour'"),
        (["--id", "no-such-doc"], "unknown document id"),
    ],
)
def test_cli_query_bad_input_exits_2(tiny, tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    from ctxvec.cli import app

    (tmp_path / "words.txt").write_text("0.1 zero 0.3\n")
    (tmp_path / "short.txt").write_text("0.1, 0.2, 0.3\n")
    monkeypatch.setenv("CTXVEC_HOME", str(tiny["home"]))
    result = CliRunner().invoke(app, ["query", *(a.replace("{tmp}", str(tmp_path))
                                                 for a in args), "--json"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""


def test_cli_query_hybrid_json(tiny, monkeypatch):
    from typer.testing import CliRunner

    from ctxvec.cli import app

    doc = next(d for d in tiny["docs"].values() if len(d["title"]) > 6)
    monkeypatch.setenv("CTXVEC_HOME", str(tiny["home"]))
    result = CliRunner().invoke(app, ["query", doc["title"], "--hybrid", "-k", "4", "--json"])
    assert result.exit_code == 0, result.stderr
    hits = json.loads(result.stdout)["hits"]
    assert 0 < len(hits) <= 4 and doc["doc_id"] in {h["doc_id"] for h in hits}


def test_cli_embed_writes_shards_and_an_index_then_reuses_them(tiny):
    model_dir = json.loads((Path(tiny["emb"].path) / "manifest.json").read_text())["model_dir"]
    args = ("embed", "--model", model_dir, "--config", str(TINY), "--set",
            "embed.words.enabled=false", "--set", "embed.shard_docs=16", "--index", "--json")
    first = _ctxvec(tiny["home"], *args)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["model_version"].startswith("model-") and out["index"]["count"] == \
        out["embeddings"]["rows"]
    folder = Path(out["embeddings"]["path"])
    shards = sorted(folder.glob("part-*.parquet"))
    assert len(shards) == -(-out["embeddings"]["docs"] // 16)
    # Same vectors as the pipeline's embeddings of this model (same recipe settings).
    a, ma = read_vectors(tiny["emb"].path)
    b, mb = read_vectors(folder)
    assert ma.select(["doc_id", "chunk"]).equals(mb.select(["doc_id", "chunk"]))
    assert np.allclose(a, b, atol=1e-3)
    index_manifest = json.loads((Path(out["index"]["path"]) / "manifest.json").read_text())
    assert index_manifest["model_version"] == out["model_version"]

    bad = _ctxvec(tiny["home"], "embed", "--model", "/no/such/model", "--json")
    assert bad.returncode == 2 and "no/such/model" in bad.stderr
