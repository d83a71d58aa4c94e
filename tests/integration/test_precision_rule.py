"""One precision rule: a query vector runs in the precision its index's vectors were embedded in.

A tiny real BERT is registered and its corpus (with word vectors) embedded and indexed with
``embed.precision: bf16`` set explicitly. bf16 autocast runs on any CPU, and on a CPU without
bf16 units ``auto`` means fp32, so here the two differ and every path can be seen following the
record rather than deciding for itself: the search and sense searchers, ``ctxvec encode`` and
``ctxvec embed`` for the version, and its pyfunc. Asking for the other precision is an error,
and so is linking an index embedded in another precision than the version records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from ctxvec.artifacts import EvalReport, IndexArtifact, TrainedModel
from ctxvec.cli.embed import embed, encode
from ctxvec.config import load_config
from ctxvec.embed.corpus import WORDS_DIR, run_embed
from ctxvec.embed.precision import PRECISION_TAG, PrecisionMismatchError, embed_precision
from ctxvec.index.build import run_index
from ctxvec.index.senses import SENSES_DIR
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.model.encoder import Encoder, resolve_precision
from ctxvec.registry import Registry
from ctxvec.registry.download import cached_version_dir
from ctxvec.serve.resolve import embed_config, query_encoder
from ctxvec.serve.search import Searcher
from ctxvec.serve.senses import SenseSearcher
from ctxvec.workspace import Workspace
from tests.helpers import tiny_bert
from tests.unit.test_evaluators import SENTENCES

NAME = "ctxvec-encoder"
REF = f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def bf16_version(tmp_path_factory):
    """Version 1, registered, embedded (chunks and word occurrences) and indexed in bf16, and
    promoted: what the pipeline leaves with ``embed.precision: bf16``."""
    root = tmp_path_factory.mktemp("precision")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            mp.delenv(key)
        mp.setenv("CTXVEC_HOME", str(home))
        src = root / "docs.jsonl"
        src.write_text("".join(json.dumps({"id": f"d{i}", "text": s}) + "\n"
                               for i, s in enumerate(SENTENCES)))
        cfg = load_config(None, [f"ingest.sources=[{src}]", "ingest.min_chars=1",
                                 "ingest.near_dup.enabled=false", "train.device=cpu",
                                 "embed.precision=bf16", "embed.words.enabled=true"])
        ws = Workspace(home).ensure()
        snap = run_ingest(cfg, ws)
        model_dir = tiny_bert(root / "bert", SENTENCES)
        run_dir = ws.runs / "run"
        run_dir.mkdir(parents=True)
        trained = TrainedModel(str(run_dir), str(model_dir), 1, 10, 2.5, None, None)
        registry = Registry(ws)
        reg = registry.register(cfg, snap, None, trained, EvalReport({}, {}))
        emb = run_embed(cfg, ws, snap, str(model_dir), reg.version)
        idx = run_index(cfg, ws, emb)
        registry.attach_index(reg.name, reg.version, idx)
        registry.promote(reg.name, reg.version)
        yield {"ws": ws, "registry": registry, "reg": reg, "emb": emb, "idx": idx,
               "model_dir": model_dir, "home": home}


def _manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def test_the_manifests_and_the_version_record_the_precision(bf16_version):
    emb, idx = Path(bf16_version["emb"].path), Path(bf16_version["idx"].path)
    assert _manifest(emb)["precision"] == "bf16"
    assert _manifest(emb / WORDS_DIR)["precision"] == "bf16"
    assert _manifest(idx)["precision"] == "bf16"
    assert _manifest(idx / SENSES_DIR)["precision"] == "bf16"
    info = bf16_version["registry"].resolve(REF)
    assert info.tags[PRECISION_TAG] == "bf16"
    assert bf16_version["registry"].embed_precision(info) == "bf16"


def test_queries_run_in_the_precision_of_the_index_they_search(bf16_version):
    ws = bf16_version["ws"]
    # the recipe's own precision does not decide: the index does
    searcher = Searcher(ws, REF, load_config(None, ["embed.precision=fp32"]))
    assert searcher.encoder.precision == "bf16"
    # a chunk's own text, as a query, finds its document first
    assert searcher.search(SENTENCES[3], k=1)[0].doc_id == "d3"
    senses = SenseSearcher.from_registry(ws, REF)
    assert senses.encoder.precision == "bf16"
    fp32 = Encoder.load(bf16_version["model_dir"], precision="fp32")
    with pytest.raises(PrecisionMismatchError, match="embedded in bf16"):
        SenseSearcher(fp32, Path(bf16_version["idx"].path) / SENSES_DIR)


def test_encode_makes_vectors_in_the_precision_of_the_version(bf16_version, tmp_path):
    ws = bf16_version["ws"]
    assert query_encoder(ws, REF).precision == "bf16"
    with pytest.raises(PrecisionMismatchError, match="embedded in bf16"):
        query_encoder(ws, REF, "fp32")
    # a folder has no recorded precision: the one `ctxvec embed` uses by default
    folder = query_encoder(ws, str(bf16_version["model_dir"]))
    assert folder.precision == resolve_precision("auto", folder.device)
    # `ctxvec encode` (the command's body): the vectors, and the precision it reports
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(SENTENCES[:2]) + "\n")
    out = json.loads(encode.__wrapped__(model=REF, input=lines, output=tmp_path / "v.parquet",
                                        batch_size=8, as_json=True))
    assert out["precision"] == "bf16" and out["rows"] == 2
    assert pq.read_table(tmp_path / "v.parquet").num_rows == 2


def test_embedding_a_version_again_follows_its_precision(bf16_version):
    ws = bf16_version["ws"]
    # `auto` follows the record: on a CPU with bf16 units it resolves to bf16 as it is (the
    # config comes back unchanged); elsewhere the record's bf16 is written in
    assert embed_precision(embed_config(load_config(None), ws, REF)) == "bf16"
    assert embed_config(load_config(None, ["embed.precision=bf16"]), ws,
                        REF).embed.precision == "bf16"
    with pytest.raises(PrecisionMismatchError, match="embedded in bf16"):
        embed_config(load_config(None, ["embed.precision=fp32"]), ws, REF)
    plain = load_config(None, ["embed.precision=fp32"])
    assert embed_config(plain, ws, "minilm") is plain  # nothing recorded for other models
    # `ctxvec embed` (the command's body) refuses before embedding anything
    with pytest.raises(PrecisionMismatchError, match="embedded in bf16"):
        embed.__wrapped__(model=REF, snapshot=None, config=None, set_=["embed.precision=fp32"],
                          words=False, build_index=True, as_json=True)


def test_an_index_in_another_precision_is_not_linked(bf16_version, tmp_path):
    registry, reg = bf16_version["registry"], bf16_version["reg"]
    folder = tmp_path / "fp32-index"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"stage": "index", "precision": "fp32"}))
    before = registry.resolve(REF).index_uri
    with pytest.raises(PrecisionMismatchError, match="embedded in fp32, but version 1"):
        registry.attach_index(NAME, reg.version,
                              IndexArtifact(str(folder), "Flat", 3, 32, 1.0, reg.version))
    assert registry.resolve(REF).index_uri == before


def test_the_pyfunc_runs_in_the_precision_of_its_index(bf16_version):
    root = cached_version_dir(bf16_version["ws"].model_cache, NAME, bf16_version["reg"].version)
    bf16_version["registry"].local_dir(REF)  # in the cache
    model = mlflow.pyfunc.load_model(str(root))
    assert model.unwrap_python_model().encoder.precision == "bf16"
