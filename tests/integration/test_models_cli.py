"""`ctxvec models list|show|promote|rollback` against a real MLflow registry on SQLite."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ctxvec.config import load_config
from ctxvec.embed.corpus import run_embed
from ctxvec.evaluate.run import run_evaluate
from ctxvec.index.build import run_index
from ctxvec.registry import Registry
from ctxvec.tokenizer.packing import run_pack
from ctxvec.train.run import run_train
from ctxvec.workspace import Workspace
from tests.helpers import TINY, run_cli, train_tiny


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Three registered versions of one tiny model: v1 and v2 indexed, v3 without an index."""
    home = tmp_path_factory.mktemp("models") / "home"
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            mp.delenv(key)
        mp.setenv("CTXVEC_HOME", str(home))
        cfg = load_config(TINY, ["evaluate.sts=null", "embed.words.enabled=false",
                                 "train.steps=2", "ingest.max_docs=60"])
        ws = Workspace(home).ensure()
        snap, tok, trained, report = train_tiny(cfg, ws)
        registry = Registry(ws)
        for _ in range(3):
            reg = registry.register(cfg, snap, tok, trained, report)
            if reg.version != "3":
                idx = run_index(cfg, ws, run_embed(cfg, ws, snap, trained.model_dir, reg.version))
                registry.attach_index(reg.name, reg.version, idx)
        # v4: another model (another seed), indexed: something to measure drift against
        cfg4 = load_config(TINY, ["evaluate.sts=null", "embed.words.enabled=false",
                                  "train.steps=2", "ingest.max_docs=60", "train.seed=7",
                                  "train.resume=false"])
        trained4 = run_train(cfg4, ws, snap, tok, run_pack(cfg4, ws, snap, tok))
        reg4 = registry.register(cfg4, snap, tok, trained4, run_evaluate(cfg4, ws, trained4))
        idx4 = run_index(cfg4, ws, run_embed(cfg4, ws, snap, trained4.model_dir, reg4.version))
        registry.attach_index(reg4.name, reg4.version, idx4)
        registry.promote("ctxvec-encoder", "1", "champion")
        yield home


def _ctxvec(home: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(home, "models", *args, timeout=300)


def _json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_list_show_promote_and_rollback(registry):
    listed = _json(_ctxvec(registry, "list", "--json"))
    assert [v["version"] for v in listed["versions"]] == ["4", "3", "2", "1"]
    assert listed["versions"][3]["aliases"] == ["champion"]
    assert listed["versions"][1]["index_uri"] is None

    shown = _json(_ctxvec(registry, "show", "champion", "--json"))
    assert shown["version"] == "1" and shown["index"]["count"] > 0
    assert shown["tags"]["data_snapshot"] and "eval/mlm_perplexity" in shown["metrics"]

    assert _json(_ctxvec(registry, "promote", "2", "--json")) == {
        "name": "ctxvec-encoder", "alias": "champion", "version": "2", "previous": "1"}
    assert _json(_ctxvec(registry, "rollback", "--json")) == {
        "name": "ctxvec-encoder", "from": "2", "to": "1"}
    assert _json(_ctxvec(registry, "show", "champion", "--json"))["version"] == "1"
    # Nothing earlier than the first champion: a clear error, champion unchanged.
    again = _ctxvec(registry, "rollback")
    assert again.returncode == 2 and "no earlier champion" in again.stderr
    assert _json(_ctxvec(registry, "show", "champion", "--json"))["version"] == "1"


def test_promote_refuses_a_version_without_an_index_or_unknown(registry):
    no_index = _ctxvec(registry, "promote", "3")
    assert no_index.returncode == 2 and "no index" in no_index.stderr
    unknown = _ctxvec(registry, "promote", "99")
    assert unknown.returncode == 2 and "99" in unknown.stderr
    text = _ctxvec(registry, "list")
    assert text.returncode == 0 and "(no index)" in text.stdout


def test_drift_between_versions_is_measured_and_shown(registry):
    same = _json(_ctxvec(registry, "drift", "1", "2", "--probes", "30", "--json"))
    assert same["overlap_at_10"] == 1.0 and abs(same["shift"]) < 1e-5
    assert same["similarity_spearman"] > 0.9999
    other = _json(_ctxvec(registry, "drift", "1", "4", "--probes", "30", "--json"))
    assert other["overlap_at_10"] < 1.0 and other["shift"] > 1e-3
    assert other["similarity_spearman"] < same["similarity_spearman"]
    assert "mlm_perplexity" in other["eval_deltas"]
    shown = _json(_ctxvec(registry, "show", "4", "--json"))
    assert shown["drift"]["overlap_at_10"] == other["overlap_at_10"]
    assert shown["metrics"]["drift/overlap_at_10"] == other["overlap_at_10"]


def test_show_says_where_the_model_is_and_export_takes_a_registry_ref(registry, tmp_path,
                                                                        monkeypatch):
    """`models show` names the version's MLflow artifact URI and, once the version is in the
    workspace cache, its local folder; `ctxvec export` takes an alias and records the version
    it pointed at."""
    from typer.testing import CliRunner

    from ctxvec.cli import app

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CTXVEC_HOME", str(registry))

    def ctxvec(*args: str):
        return CliRunner().invoke(app, list(args))

    done = ctxvec("export", "models:/ctxvec-encoder@champion", "--format",
                  "sentence-transformers", "--out", str(tmp_path / "st"), "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["source"] == "models:/ctxvec-encoder/1"
    shown = json.loads(ctxvec("models", "show", "1", "--json").stdout)
    folder = Path(shown["model_dir"])
    assert (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
    # the embedded store keeps artifacts on local disk: the URI names the logged model's folder
    assert (Path(shown["artifact_uri"].removeprefix("file://")) / "MLmodel").is_file()
    text = ctxvec("models", "show", "1").stdout
    assert f"model folder: {folder}" in text and f"model artifacts: {shown['artifact_uri']}" in text
    unknown = ctxvec("export", "models:/ctxvec-encoder/99", "--format", "onnx", "--out",
                     str(tmp_path / "x"))
    assert unknown.exit_code == 2 and "not in the registry" in unknown.output
