"""Stage caching in the pipeline flow (flows/caching.py), through real Prefect task runs.

One workspace, one small corpus that ingest reads completely (so a second ingest finds nothing
new and names the same corpus), four runs in-process on the session's Prefect server:
1. everything runs (the session's shared run, tests/flows/conftest.py);
2. the same inputs: every cached stage is ``Cached`` (train is not run again), the same model
   version comes back and the registry holds no new one;
3. the index folder deleted: index runs again (its cached result points at nothing), the rest
   stays cached;
4. ``train.steps`` changed: train runs again and a new version is registered.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.flows.runs import run_pipeline_flow

CACHED_STAGES = ["tokenizer", "pack", "train", "evaluate", "register", "embed", "index"]


def run(home: Path, overrides: list[str]) -> tuple[dict, dict[str, str]]:
    r = run_pipeline_flow(home, overrides)
    return r.summary, r.states


def test_unchanged_stages_are_cached_and_changed_ones_rerun(small_pipeline_run, prefect_client,
                                                            monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home, base = small_pipeline_run.home, small_pipeline_run.overrides
    first, states = small_pipeline_run.summary, small_pipeline_run.states
    assert states["train"] == "Completed" and states["index"] == "Completed"
    assert first["model"]["version"] == "1"
    assert (home / "prefect-results").is_dir()  # results persist in the workspace

    # 2. same inputs: ingest runs (and finds nothing new), everything after it is cached
    second, states = run(home, base)
    assert not second["snapshot"]["created"]
    assert second["snapshot"]["snapshot_id"] == first["snapshot"]["snapshot_id"]
    assert states["ingest"] == "Completed"
    assert {s: states[s] for s in CACHED_STAGES} == dict.fromkeys(CACHED_STAGES, "Cached")
    assert second["train"] == first["train"] and second["model"] == first["model"]
    assert states["promote"] == "Completed"  # never cached: the alias may have moved
    from mlflow import MlflowClient

    db = f"sqlite:///{home / 'mlflow.db'}"
    registry = MlflowClient(tracking_uri=db, registry_uri=db)
    versions = registry.search_model_versions("name='ctxvec-encoder'")
    assert [str(v.version) for v in versions] == ["1"]

    # 3. a cached result whose files are gone is not used: the stage runs again
    shutil.rmtree(first["index"]["path"])
    third, states = run(home, base)
    assert states["index"] == "Completed" and states["embed"] == "Cached"
    assert Path(third["index"]["path"], "manifest.json").is_file()
    assert third["sample_query"]["hits"]  # the rebuilt index serves

    # 4. a train setting changed: train runs again, upstream stays cached, a new version (no
    # evaluation compares it with the champion here, so the gate would hold it back: always)
    fourth, states = run(home, [*base, "train.steps=8", "registry.promote=always"])
    assert states["train"] == "Completed" and fourth["train"]["steps"] == 8
    assert states["tokenizer"] == "Cached" and states["pack"] == "Cached"
    assert states["register"] == "Completed" and fourth["model"]["version"] == "2"
    assert fourth["champion"] == "2" and states["embed"] == "Completed"


def test_train_carries_the_gpu_concurrency_tag():
    from ctxvec_flows.pipeline import GPU_TRAIN_TAG, train_task

    assert GPU_TRAIN_TAG in train_task.tags
