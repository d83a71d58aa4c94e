"""run_embed: shards, resume after a failure, pooling and dtype choices, several workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ctxvec.config import load_config
from ctxvec.embed import corpus as embed_corpus
from ctxvec.embed.corpus import read_vectors, run_embed
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.model.encoder import Encoder
from tests.helpers import tiny_bert
from tests.unit.test_evaluators import SENTENCES

LONG = " ".join(SENTENCES * 4)  # longer than the 24-token window: several chunks


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"), SENTENCES)


@pytest.fixture
def snapshot(workspace, tmp_path):
    docs = [{"id": f"d{i}", "text": s} for i, s in enumerate(SENTENCES)]
    docs.append({"id": "long", "text": LONG})
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = load_config(None, [f"ingest.sources=[{src}]", "ingest.min_chars=1",
                             "ingest.near_dup.enabled=false"])
    return run_ingest(cfg, workspace)


def _cfg(*overrides: str):
    return load_config(None, ["embed.max_tokens=24", "embed.stride=4", "embed.shard_docs=3",
                              "embed.precision=fp32", "train.device=cpu", *overrides])


def test_shards_hold_every_chunk_with_its_offsets(workspace, snapshot, tiny_dir):
    emb = run_embed(_cfg(), workspace, snapshot, str(tiny_dir), "7")
    folder = Path(emb.path)
    shards = sorted(folder.glob("part-*.parquet"))
    n_docs = len(SENTENCES) + 1
    assert len(shards) == -(-n_docs // 3) and emb.docs == n_docs
    vecs, meta = read_vectors(folder)
    assert len(vecs) == emb.rows == meta.num_rows
    long_rows = [r for r in meta.to_pylist() if r["doc_id"] == "long"]
    assert len(long_rows) > 3 and [r["chunk"] for r in long_rows] == list(range(len(long_rows)))
    assert long_rows[0]["start"] == 0 and long_rows[-1]["end"] == len(LONG)
    # Each chunk's vector is the encoder's vector of exactly that span of text.
    enc = Encoder.load(tiny_dir, device="cpu")
    rows = meta.to_pylist()
    texts = {f"d{i}": s for i, s in enumerate(SENTENCES)} | {"long": LONG}
    i = next(j for j, r in enumerate(rows) if r["doc_id"] == "d0")
    direct = enc.encode([texts["d0"][rows[i]["start"]:rows[i]["end"]]])[0]
    assert float(direct @ vecs[i]) > 0.9999
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["shards"] == len(shards) and manifest["rows"] == emb.rows
    assert manifest["precision"] == "fp32" and manifest["pooling"] == "mean"
    assert set(meta.column("model_version").to_pylist()) == {"7"}


def test_an_interrupted_run_resumes_at_the_first_missing_shard(
    workspace, snapshot, tiny_dir, monkeypatch
):
    clean = run_embed(_cfg(), workspace, snapshot, str(tiny_dir), "clean")
    calls = {"n": 0}
    real_write = embed_corpus.write_shard

    def failing_write(table, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        real_write(table, path)

    monkeypatch.setattr(embed_corpus, "write_shard", failing_write)
    with pytest.raises(RuntimeError, match="killed"):
        run_embed(_cfg(), workspace, snapshot, str(tiny_dir), "8")
    assert not (workspace.embeddings / "v8").exists()  # nothing half-built is published
    partial = list(workspace.embeddings.glob(".partial-v8-*"))
    assert len(partial) == 1 and len(list(partial[0].glob("part-*.parquet"))) == 2
    assert not list(partial[0].glob(".*.tmp"))

    monkeypatch.setattr(embed_corpus, "write_shard", real_write)
    emb = run_embed(_cfg(), workspace, snapshot, str(tiny_dir), "8")
    manifest = json.loads((Path(emb.path) / "manifest.json").read_text())
    assert manifest["resumed_shards"] == 2
    assert not list(workspace.embeddings.glob(".partial-v8-*"))
    a, ma = read_vectors(clean.path)
    b, mb = read_vectors(emb.path)
    assert ma.drop_columns(["model_version"]).equals(mb.drop_columns(["model_version"]))
    assert np.allclose(a, b, atol=1e-6)


def test_changed_settings_do_not_reuse_old_shards(workspace, snapshot, tiny_dir, monkeypatch):
    def fail(table, path):
        raise RuntimeError("killed")

    monkeypatch.setattr(embed_corpus, "write_shard", fail)
    with pytest.raises(RuntimeError):
        run_embed(_cfg(), workspace, snapshot, str(tiny_dir), "9")
    monkeypatch.undo()
    emb = run_embed(_cfg("embed.stride=8"), workspace, snapshot, str(tiny_dir), "9")
    manifest = json.loads((Path(emb.path) / "manifest.json").read_text())
    assert manifest["resumed_shards"] == 0 and manifest["stride"] == 8


def test_pooling_and_dtype_options(workspace, snapshot, tiny_dir):
    mean = run_embed(_cfg(), workspace, snapshot, str(tiny_dir), "mean")
    cls = run_embed(_cfg("embed.pooling=cls", "embed.dtype=float16"), workspace, snapshot,
                    str(tiny_dir), "cls")
    table = pq.read_table(sorted(Path(cls.path).glob("part-*.parquet"))[0])
    assert str(table.schema.field("vector").type.value_type) == "halffloat"
    a, _ = read_vectors(mean.path)
    b, _ = read_vectors(cls.path)
    assert a.shape == b.shape and float(np.mean(np.sum(a * b, axis=1))) < 0.99
    assert json.loads((Path(cls.path) / "manifest.json").read_text())["pooling"] == "cls"


def test_bf16_vectors_stay_close_to_fp32(workspace, snapshot, tiny_dir):
    fp32 = run_embed(_cfg(), workspace, snapshot, str(tiny_dir), "fp32")
    bf16 = run_embed(_cfg("embed.precision=bf16"), workspace, snapshot, str(tiny_dir), "bf16")
    a, _ = read_vectors(fp32.path)
    b, _ = read_vectors(bf16.path)
    assert float(np.min(np.sum(a * b, axis=1))) > 0.99


def test_several_workers_write_the_same_shards(workspace, snapshot, tiny_dir):
    one = run_embed(_cfg(), workspace, snapshot, str(tiny_dir), "one")
    two = run_embed(_cfg(), workspace, snapshot, str(tiny_dir), "two", devices=["cpu", "cpu"])
    a, ma = read_vectors(one.path)
    b, mb = read_vectors(two.path)
    assert ma.select(["doc_id", "chunk", "start", "end"]).equals(
        mb.select(["doc_id", "chunk", "start", "end"]))
    assert np.allclose(a, b, atol=1e-5)
