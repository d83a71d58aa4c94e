"""embed.engine=ray: Ray Data actors on a local Ray cluster write what the local path writes.

One small Ray (2 logical CPUs: one actor and Ray Data's read tasks, 200 MB object store) serves
the module; the engine finds it initialised and leaves it running. One actor, since each costs
seconds to start on two cores (bench/embed_ray.py runs two on a real corpus and checks their
output against the local path's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctxvec.config import ConfigError, RayEmbedConfig, load_config
from ctxvec.embed.corpus import EmbedJob, read_vectors, run_embed
from ctxvec.embed.ray_engine import (
    ActorPlan,
    EmbedActor,
    RayMissingError,
    import_ray,
    plan_actors,
    plan_corpus,
    written_doc_ids,
)
from ctxvec.errors import UserInputError
from ctxvec.index.build import run_index
from ctxvec.index.faiss_index import FaissIndex
from ctxvec.index.id_map import chunk_ids
from ctxvec.ingest.snapshot import run_ingest
from tests.helpers import REPO, tiny_bert
from tests.unit.test_evaluators import SENTENCES

LONG = " ".join(SENTENCES * 4)  # longer than the 24-token window: several chunks
NEW_D1 = "The river changed its course last spring."
KEY = ["doc_id", "chunk", "start", "end"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"), SENTENCES)


def _ingest(workspace, folder: Path, docs: list[dict]):
    folder.mkdir()
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = load_config(None, [f"ingest.sources=[{folder}]", "ingest.min_chars=1",
                             "ingest.near_dup.enabled=false"])
    return run_ingest(cfg, workspace)


@pytest.fixture
def two_snapshots(workspace, tmp_path):
    """A corpus of two snapshots: the second changes d1's text and adds d_new, so the corpus
    view must take d1 from the second one only (latest wins)."""
    docs = [{"id": f"d{i}", "text": s} for i, s in enumerate(SENTENCES)]
    docs.append({"id": "long", "text": LONG})
    _ingest(workspace, tmp_path / "a", docs)
    snap = _ingest(workspace, tmp_path / "b", [
        {"id": "d1", "text": NEW_D1},
        {"id": "d_new", "text": "A new document about boats on the sea."}])
    assert len(snap.corpus) == 2
    return snap


def _cfg(*overrides: str):
    return load_config(None, ["embed.max_tokens=24", "embed.stride=4", "embed.shard_docs=3",
                              "embed.precision=fp32", "train.device=cpu",
                              "embed.ray.batch_size=3", "embed.ray.actors=1", *overrides])


def _by_key(path: str) -> tuple[dict, np.ndarray]:
    vecs, meta = read_vectors(path)
    keys = [tuple(r[k] for k in KEY) for r in meta.to_pylist()]
    assert len(set(keys)) == len(keys)
    return {k: i for i, k in enumerate(keys)}, vecs


def _assert_same_as_local(emb, local) -> dict:
    """Same rows, vectors, schema and manifest fields as the local path; -> the manifest."""
    assert (emb.rows, emb.docs, emb.dim) == (local.rows, local.docs, local.dim)
    loc_keys, loc_vecs = _by_key(local.path)
    ray_keys, ray_vecs = _by_key(emb.path)
    assert set(ray_keys) == set(loc_keys)
    order = [ray_keys[k] for k in loc_keys]
    assert np.allclose(ray_vecs[order], loc_vecs, atol=1e-5)
    d1 = [k for k in ray_keys if k[0] == "d1"]
    assert d1[0][2] == 0 and max(k[3] for k in d1) == len(NEW_D1)  # its newest text only
    assert "d_new" in {k[0] for k in ray_keys}
    loc_schema = pq.read_schema(next(Path(local.path).glob("part-*.parquet")))
    for p in Path(emb.path).glob("part-*.parquet"):
        assert pq.read_schema(p).equals(loc_schema, check_metadata=False)
    manifest = json.loads((Path(emb.path) / "manifest.json").read_text())
    loc_manifest = json.loads((Path(local.path) / "manifest.json").read_text())
    assert set(loc_manifest) - set(manifest) == set()
    for field in ("rows", "docs", "dim", "dtype", "max_tokens", "stride", "pooling",
                  "normalized", "precision", "corpus", "model_dir"):
        assert manifest[field] == loc_manifest[field], field
    assert manifest["engine"] == "ray"
    assert sum(1 for _ in Path(emb.path).glob("part-*.parquet")) == manifest["shards"]
    return manifest


def test_ray_output_equals_local_and_indexes(workspace, two_snapshots, tiny_dir, ray_cluster):
    local = run_embed(_cfg(), workspace, two_snapshots, str(tiny_dir), "1")
    emb = run_embed(_cfg("embed.engine=ray"), workspace, two_snapshots, str(tiny_dir), "2")
    manifest = _assert_same_as_local(emb, local)
    assert len(list(Path(emb.path).glob("part-r*.parquet"))) >= 3  # batches of at most 3 docs
    ray_figures = manifest["ray"]
    assert ray_figures["actors"] == 1 and ray_figures["started_here"] is False
    assert ray_figures["batches"] >= 3 and ray_figures["resumed_docs"] == 0
    assert not list(workspace.embeddings.glob(".partial-v2-*"))

    # The index stage takes the Ray output unchanged.
    idx = run_index(_cfg(), workspace, emb)
    assert idx.count == emb.rows and idx.dim == emb.dim
    vecs, meta = read_vectors(emb.path)
    index = FaissIndex.load(Path(idx.path), idx.factory)
    _, hits = index.search(vecs[:4], 1)
    assert hits[:, 0].tolist() == chunk_ids(meta.column("doc_id").to_pylist()[:4],
                                            meta.column("chunk").to_numpy()[:4]).tolist()


def test_actor_leaves_out_written_and_superseded_documents(two_snapshots, tiny_dir, tmp_path):
    """What resume and latest-wins rest on, without Ray: the actor class called in process."""
    corpus = plan_corpus(two_snapshots.corpus)
    assert corpus.superseded == {Path(two_snapshots.corpus[0]).name: frozenset({"d1"})}
    assert corpus.docs == len(SENTENCES) + 2  # + long, d_new; d1 once
    batch = pa.concat_tables([
        pq.read_table(f, columns=["doc_id", "text"]).append_column(
            "path", pa.array([f] * pq.ParquetFile(f).metadata.num_rows)) for f in corpus.files])
    work = tmp_path / "work"
    work.mkdir()
    job = EmbedJob(model_dir=str(tiny_dir), model_version="3", corpus=two_snapshots.corpus,
                   work_dir=str(work), max_tokens=24, stride=4, pooling="model",
                   precision="fp32", dtype="float32", batch_size=64, shard_docs=3)
    actor = EmbedActor(job, "cpu", None, skip=frozenset({"d0"}), superseded=corpus.superseded)
    (summary,) = actor(batch).to_pylist()
    want = {f"d{i}" for i in range(1, len(SENTENCES))} | {"long", "d_new"}
    assert summary["docs"] == len(want) and written_doc_ids(work) == (frozenset(want), 1)
    table = pq.read_table(work / summary["file"])
    assert summary["rows"] == table.num_rows
    d1_ends = [r["end"] for r in table.to_pylist() if r["doc_id"] == "d1"]
    assert max(d1_ends) == len(NEW_D1)
    # everything already written: the batch writes nothing
    again = EmbedActor(job, "cpu", None, skip=frozenset(want | {"d0"}),
                       superseded=corpus.superseded)
    assert again(batch).to_pylist()[0]["file"] == ""
    assert len(list(work.glob("part-*.parquet"))) == 1


@pytest.mark.slow  # ~40-50 s on 2 CPU cores; .ci/run runs it
def test_an_interrupted_ray_run_resumes(workspace, two_snapshots, tiny_dir, ray_cluster):
    snap = two_snapshots
    local = run_embed(_cfg(), workspace, snap, str(tiny_dir), "1")
    # A Ray run that fails after its actors wrote every batch (a bad word-vector layer is found
    # on the driver): nothing is published, the part files stay for the next attempt.
    with pytest.raises(UserInputError, match="layer 99"):
        run_embed(_cfg("embed.engine=ray", "embed.words.enabled=true",
                       "embed.words.layers=[99]"), workspace, snap, str(tiny_dir), "2")
    assert not (workspace.embeddings / "v2").exists()
    (partial,) = workspace.embeddings.glob(".partial-v2-*")
    parts = sorted(partial.glob("part-r*.parquet"))
    assert len(parts) >= 3  # 10 documents in batches of at most 3
    lost = pq.read_table(parts[0], columns=["doc_id"]).column(0).unique().to_pylist()
    parts[0].unlink()  # as if the run had died before this batch
    kept = {p.name: p.stat().st_mtime_ns for p in parts[1:]}

    # The next attempt embeds only the lost documents and publishes the whole folder.
    emb = run_embed(_cfg("embed.engine=ray"), workspace, snap, str(tiny_dir), "2")
    assert {p.name: p.stat().st_mtime_ns for p in Path(emb.path).glob("part-r*.parquet")
            if p.name in kept} == kept
    manifest = _assert_same_as_local(emb, local)
    assert manifest["ray"]["resumed_docs"] == local.docs - len(lost)
    assert manifest["resumed_shards"] == len(kept)


def test_actor_plan_defaults_and_refusals():
    cpu = {"CPU": 3.0}
    assert plan_actors(RayEmbedConfig(), cpu) == ActorPlan(2, 1.0, 0.0)
    assert plan_actors(RayEmbedConfig(), cpu).threads == 1
    assert plan_actors(RayEmbedConfig(num_cpus=2), cpu).threads == 2
    gpu = {"CPU": 16.0, "GPU": 2.0}
    assert plan_actors(RayEmbedConfig(), gpu) == ActorPlan(2, 1.0, 1.0)
    assert plan_actors(RayEmbedConfig(), gpu).device == "cuda"
    assert plan_actors(RayEmbedConfig(), gpu, train_device="cpu").device == "cpu"
    assert plan_actors(RayEmbedConfig(num_gpus=0.5), gpu).actors == 4
    # Pools the cluster cannot hold would wait for ever in Ray: refused, naming the keys.
    with pytest.raises(UserInputError, match="embed.ray.num_gpus"):
        plan_actors(RayEmbedConfig(num_gpus=1), cpu)
    with pytest.raises(UserInputError, match="embed.ray.actors=3 x num_cpus=1"):
        plan_actors(RayEmbedConfig(actors=3), cpu)
    with pytest.raises(UserInputError, match="embed.ray.actors"):
        plan_actors(RayEmbedConfig(num_cpus=2), {"CPU": 2.0})
    with pytest.raises(UserInputError, match="needs 3 GPUs"):
        plan_actors(RayEmbedConfig(actors=3), gpu)


def test_config_keys_and_address_check():
    cfg = load_config(None, [])
    assert cfg.embed.engine == "local" and cfg.embed.ray.address is None
    for ok in ("auto", "ray://head:10001", "10.0.0.5:6379"):
        assert load_config(None, [f"embed.ray.address={ok}"]).embed.ray.address == ok
    with pytest.raises(ConfigError, match="embed.ray.address"):
        load_config(None, ["embed.ray.address=http://head"])
    with pytest.raises(ConfigError, match="embed.engine"):
        load_config(None, ["embed.engine=spark"])


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when not installed
    with pytest.raises(RayMissingError, match=r"pip install 'ctxvec\[ray\]'"):
        import_ray()


def test_ctxvec_does_not_import_ray_for_the_local_engine():
    code = ("import sys, ctxvec.cli, ctxvec.embed.corpus, ctxvec.config; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
