"""``Registry(ws)`` on a real MLflow (SQLite in a temp folder): a reference is resolved with one
registry read, a version is downloaded once into the workspace cache, MLflow's process-wide URIs
are never left pointing anywhere else, and two workspaces in one process do not cross."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest

from ctxvec.artifacts import EvalReport, IndexArtifact, TrainedModel
from ctxvec.config import CtxvecConfig
from ctxvec.refs import ModelRef, ModelRefError
from ctxvec.registry import ModelVersion, Registry
from ctxvec.serve.champion import ChampionWatcher
from ctxvec.workspace import Workspace
from tests.helpers import tiny_bert

NAME = "ctxvec-encoder"
SENTENCES = ["I saw a saw in the shed.", "The bank of the river.", "A bank loan."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert") / "model", SENTENCES)


@pytest.fixture
def fresh_process_uris(monkeypatch):
    """No MLflow server from the environment, and MLflow's globals as a fresh process has them."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    yield before
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def _register(ws: Workspace, model_dir: Path, tag: str) -> str:
    run_dir = ws.runs / f"run-{tag}"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n")
    trained = TrainedModel(str(run_dir), str(model_dir), 1, 10, 2.5, None, None)
    reg = Registry(ws).register(CtxvecConfig(), None, None, trained,
                                EvalReport({"sts_spearman": 0.5}, {}))
    assert reg.uri == f"models:/{NAME}/{reg.version}"
    Registry(ws).set_tags(NAME, reg.version, {"which": tag})
    return reg.version


def _attach_index(ws: Workspace, version: str) -> None:
    folder = ws.indexes / f"idx-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": "index", "count": 3}))
    Registry(ws).attach_index(NAME, version, IndexArtifact(str(folder), "Flat", 3, 32, 1.0,
                                                           version))


def test_resolve_reads_once_download_once_and_leaves_mlflow_globals_alone(
        tmp_path, model_dir, fresh_process_uris, registry_reads):
    ws = Workspace(tmp_path / "home").ensure()
    registry = Registry(ws)
    v1 = _register(ws, model_dir, "a")
    _attach_index(ws, v1)
    assert registry.promote(NAME, v1) is None

    registry_reads.clear()
    info = registry.resolve(ModelRef.parse(f"models:/{NAME}@champion"))
    assert registry_reads == ["get_model_version_by_alias"]  # one registry read per resolve
    assert isinstance(info, ModelVersion) and info.version == v1 and "champion" in info.aliases
    assert info.ref == ModelRef.registered(NAME, version=v1) and info.index_uri
    assert registry.resolve(info) is info  # already resolved: no read at all
    assert len(registry_reads) == 1

    registry_reads.clear()
    folder = registry.local_dir(info)
    root = ws.model_cache / NAME / v1  # the cache location and layout as before
    assert (root / "MLmodel").is_file() and (root / "registered_model_meta").is_file()
    assert folder.parent.parent == root and (folder / "config.json").is_file()
    assert (folder / "model.safetensors").read_bytes() == \
        (model_dir / "model.safetensors").read_bytes()
    registry_reads.clear()
    assert registry.local_dir(f"models:/{NAME}/{v1}") == folder  # cached: no registry read
    assert registry.local_dir(info) == folder and registry_reads == []
    assert registry.local_dir(f"models:/{NAME}@champion") == folder
    assert registry_reads == ["get_model_version_by_alias"]  # an alias moves: resolved, once
    assert registry.local_dir("minilm").is_dir()  # other references: the model layer's

    with pytest.raises(ModelRefError, match=f"models:/{NAME}/99: not in the registry"):
        registry.resolve(f"models:/{NAME}/99")
    with pytest.raises(ModelRefError, match="not a registry reference"):
        registry.resolve("minilm")


def test_two_workspaces_in_one_process_do_not_cross(tmp_path, model_dir, fresh_process_uris):
    a = Workspace(tmp_path / "a").ensure()
    b = Workspace(tmp_path / "b").ensure()
    ra, rb = Registry(a), Registry(b)
    assert _register(a, model_dir, "a1") == "1"
    assert _register(b, model_dir, "b1") == "1"
    assert _register(a, model_dir, "a2") == "2"
    assert [v.tags["which"] for v in ra.list_versions(NAME)] == ["a2", "a1"]
    assert [v.tags["which"] for v in rb.list_versions(NAME)] == ["b1"]
    assert Registry(b).resolve(f"models:/{NAME}/1").tags["which"] == "b1"
    with pytest.raises(ModelRefError):
        rb.resolve(f"models:/{NAME}/2")
    # each registry's run and model files live in its own workspace
    for ws, reg in ((a, ra), (b, rb)):
        run_id = reg.resolve(f"models:/{NAME}/1").run_id
        assert str(ws.root) in reg.client.get_run(run_id).info.artifact_uri
        assert reg.local_dir(f"models:/{NAME}/1").is_relative_to(ws.model_cache)
    assert ra.details(NAME, "2")["metrics"]["train/loss"] == 2.5
    assert not (Path.cwd() / "mlruns").exists()


def test_the_champion_watcher_resolves_once_and_hands_the_version_on(
        tmp_path, model_dir, fresh_process_uris, registry_reads):
    ws = Workspace(tmp_path / "home").ensure()
    registry = Registry(ws)
    v1, v2 = _register(ws, model_dir, "a"), _register(ws, model_dir, "b")
    _attach_index(ws, v1)
    _attach_index(ws, v2)
    registry.promote(NAME, v1)
    loaded: list[ModelVersion] = []

    class Stub:
        def __init__(self, info: ModelVersion):
            self.version = info.version

    def loader(w, info):
        assert w is ws
        loaded.append(info)
        return Stub(info)

    registry_reads.clear()
    watcher = ChampionWatcher(ws, f"models:/{NAME}@champion", 60, loader=loader,
                              registry=registry)
    assert registry_reads == ["get_model_version_by_alias"]
    assert [i.version for i in loaded] == [v1] and isinstance(loaded[0], ModelVersion)
    assert str(watcher.ref) == f"models:/{NAME}@champion" and watcher.name == NAME
    registry_reads.clear()
    assert watcher.poll() is False and registry_reads == ["get_model_version_by_alias"]
    registry.promote(NAME, v2)
    registry_reads.clear()
    assert watcher.poll() is True and registry_reads == ["get_model_version_by_alias"]
    assert [i.version for i in loaded] == [v1, v2] and watcher.current.version == v2
    assert registry.rollback(NAME) == (v2, v1)
    with pytest.raises(ModelRefError, match="registered versions"):
        ChampionWatcher(ws, "minilm", 60, loader=loader, registry=registry)
