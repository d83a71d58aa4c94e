"""``ctxvec workspace du`` says where a workspace's space goes and what can be pruned;
``ctxvec workspace prune`` reclaims it without touching what a registered version, an alias or a
resumable run needs.

A real workspace: the tiny recipe trained with checkpoints (a finished run), registered in MLflow
on SQLite (a copy of its weights in the MLflow artifacts), downloaded once into the cache (a third
copy), beside the checkpoints of a run that was killed (resumable) and a killed writer's staging
folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import TINY, train_tiny


@pytest.fixture
def cluttered(tmp_path, monkeypatch):
    from ctxvec.config import load_config
    from ctxvec.registry import Registry
    from ctxvec.workspace import Workspace

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("CTXVEC_HOME", str(home))
    ws = Workspace(home).ensure()
    cfg = load_config(TINY, ["evaluate.sts=null", "train.steps=4", "train.checkpoint_every=2",
                             "ingest.max_docs=40"])
    snap, tok, trained, report = train_tiny(cfg, ws)
    registry = Registry(ws)
    reg = registry.register(cfg, snap, tok, trained, report)
    registry.local_dir(reg.uri)  # a query's download of the version
    # a run killed after its first checkpoint: resumable, so its checkpoints must stay
    killed = ws.runs / "tiny-killed"
    shutil.copytree(Path(trained.run_dir) / "checkpoints", killed / "checkpoints")
    # a staging folder a killed writer left
    (ws.snapshots / ".tmp-20990101-dead").mkdir()
    (ws.snapshots / ".tmp-20990101-dead" / "docs.parquet").write_bytes(b"x" * 100_000)
    return ws, reg, trained, killed


def _cli(*args: str) -> dict:
    from ctxvec.cli import app

    result = CliRunner().invoke(app, ["workspace", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_du_names_the_areas_and_prune_keeps_what_is_needed(cluttered):
    from ctxvec.model.encoder import Encoder
    from ctxvec.registry import Registry

    ws, reg, trained, killed = cluttered
    weights = "model.safetensors"
    copies = [Path(trained.model_dir) / weights,
              *ws.model_cache.rglob(weights), *ws.mlflow_artifacts.rglob(weights)]
    assert len(copies) == 3 and len({p.stat().st_ino for p in copies}) == 3
    size = copies[0].stat().st_size

    du = _cli("du")
    areas = {a["area"]: a["bytes"] for a in du["areas"]}
    assert areas["runs: checkpoints"] > 0 and areas["download cache"] >= size
    assert areas["MLflow artifacts"] >= size and areas["runs: trained models"] >= size
    assert du["total_bytes"] == sum(areas.values())
    kinds = {}
    for item in du["prunable"]:
        kinds.setdefault(item["kind"], []).append(item)
    assert [Path(i["path"]) for i in kinds["checkpoints"]] == [
        Path(trained.run_dir) / "checkpoints"]  # not the killed run's: it can resume
    assert sum(i["bytes"] for i in kinds["duplicate"]) >= 2 * size
    assert [Path(i["path"]).name for i in kinds["staging"]] == [".tmp-20990101-dead"]

    dry = _cli("prune", "--dry-run")
    assert dry["freed_bytes"] == du["prunable_bytes"] and dry["dry_run"]
    assert _cli("du")["total_bytes"] == du["total_bytes"]  # nothing touched

    done = _cli("prune")
    after = _cli("du")
    assert after["total_bytes"] <= du["total_bytes"] - du["prunable_bytes"] + 4096 * 8
    assert after["prunable"] == [] and done["freed_bytes"] == du["prunable_bytes"]
    # one copy of the weights, three names for it; the checkpoints the killed run needs remain
    assert len({p.stat().st_ino for p in copies}) == 1
    assert not (Path(trained.run_dir) / "checkpoints").exists()
    assert list((killed / "checkpoints").iterdir())
    assert not (ws.snapshots / ".tmp-20990101-dead").exists()
    # the version and the finished run still serve: loaded from the cache and the run folder
    Encoder.load(Registry(ws).local_dir(reg.uri), device="cpu").encode(["a river"])
    Encoder.load(trained.model_dir, device="cpu").encode(["a river"])


def test_du_of_a_missing_workspace_exits_2_and_creates_nothing(tmp_path, monkeypatch):
    from ctxvec.cli import app

    monkeypatch.setenv("CTXVEC_HOME", str(tmp_path / "nope"))
    result = CliRunner().invoke(app, ["workspace", "du"])
    assert result.exit_code == 2 and "CTXVEC_HOME" in result.output
    assert not (tmp_path / "nope").exists()
