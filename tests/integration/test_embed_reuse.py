"""``ctxvec embed --model models:/ctxvec-encoder/1 --index`` after the pipeline embedded and
indexed that version: the finished embeddings are reused (not embedded again from scratch), and
the rebuilt index keeps the version's sense index; embedding it again with other settings makes
its word vectors again. It used to re-embed with the default recipe (no word vectors), so the
new index had no ``senses/`` and sense search exited 2.

A tiny real encoder, registered in a real MLflow registry on SQLite, on a small ingested corpus;
``stages.embed_model`` is what ``ctxvec embed`` runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import tiny_bert

TEXTS = [f"the {animal} crossed the {place} near the river bank on day {i}"
         for i, (animal, place) in enumerate(
             [(a, p) for a in ("dog", "cat", "horse", "bird") for p in ("road", "field", "town")])]
TEXTS += [f"she paid the money into her account at the bank on day {i}" for i in range(8)]


@pytest.fixture
def indexed(tmp_path, monkeypatch):
    """Version 1 embedded and indexed as the pipeline's stages do, word vectors included."""
    from ctxvec.artifacts import EvalReport, TrainedModel
    from ctxvec.config import load_config
    from ctxvec.index.build import run_index
    from ctxvec.ingest.snapshot import run_ingest
    from ctxvec.registry import Registry
    from ctxvec.stages import pipeline
    from ctxvec.workspace import Workspace

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                              for i, t in enumerate(TEXTS)))
    ws = Workspace(tmp_path / "home").ensure()
    base = [f"ingest.sources=[{corpus}]", "ingest.near_dup.enabled=false",
            "embed.max_tokens=32", "index.factory=Flat"]
    cfg = load_config(None, [*base, "embed.words.enabled=true", "embed.batch_size=8"])
    snap = run_ingest(cfg, ws)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trained = TrainedModel(str(run_dir), str(tiny_bert(tmp_path / "model", TEXTS)), 1, 1, None,
                           None, None)
    registry = Registry(ws)
    reg = registry.register(cfg, snap, None, trained, EvalReport({}, {}))
    emb = pipeline.embed(cfg, ws, snap, trained, reg)  # the pipeline's embed and index stages
    registry.attach_index(reg.name, reg.version, run_index(cfg, ws, emb))
    return ws, base, reg


def _manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())


def test_embed_index_reuses_the_version_s_embeddings_and_keeps_its_senses(indexed):
    from ctxvec import stages
    from ctxvec.config import load_config
    from ctxvec.serve.senses import SenseSearcher

    ws, base, reg = indexed
    before = _manifest(ws.embeddings / "v1")
    assert before["words"] and _manifest(ws.indexes / "v1")["senses"]
    # as the README's `ctxvec embed --model models:/ctxvec-encoder/1 --index`: no --words
    out = stages.embed_model(load_config(None, base), ws, reg.uri, build_index=True)
    assert _manifest(out["embeddings"]["path"]) == before  # reused, not embedded again
    index = _manifest(out["index"]["path"])
    assert index["senses"] and (ws.indexes / "v1" / "senses").is_dir()
    hits = SenseSearcher.from_registry(ws, reg.uri).senses("bank", "money at the bank", k=3)
    assert [h.word for h in hits] == ["bank"] * 3

    # another chunking: embedded again, and its word vectors made again with them
    out = stages.embed_model(load_config(None, [*base, "embed.stride=4"]), ws, reg.uri,
                             build_index=True)
    again = _manifest(out["embeddings"]["path"])
    assert again["stride"] == 4 != before["stride"]
    assert again["words"]["sample_docs"] == before["words"]["sample_docs"]
    assert _manifest(out["index"]["path"])["senses"]
    # and that is reused in turn, without an index
    out = stages.embed_model(load_config(None, [*base, "embed.stride=4"]), ws, reg.uri)
    assert _manifest(out["embeddings"]["path"]) == again and out["index"] is None
