"""The pipeline flow trains under torchrun when ``train.nproc_per_node`` > 1 (here 2 gloo CPU
processes), and everything downstream (register, embed, index, promote) runs as after an
in-process training.

What must hold: the run's manifest says world size 2; the ranks ran no data stage (the train
task's log, which streams the ranks' output, holds rank 0's training and no ingest, tokenizer
or pack line, and rank 1 logs nothing at INFO); the pipeline completes with version 1
registered and its index built. A rank failing on bad input fails the launch with that same
``UserInputError`` (exit code 2 in the CLI), not a generic error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ctxvec.artifacts import PackedData, Snapshot, TokenizerArtifact
from ctxvec.config import load_config
from ctxvec.errors import UserInputError
from ctxvec.train.launch import launch, train_with_launch
from ctxvec.workspace import Workspace
from tests.flows.runs import small_run_overrides, task_runs, write_corpus
from tests.helpers import TINY


def _task_log(task_run_id, expect: str, timeout: float = 30.0) -> list[str]:
    """The messages Prefect recorded for a task run, once ``expect`` is among them (the log
    handler ships records to the API in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(
                task_run_id=LogFilterTaskRunId(any_=[task_run_id])), limit=200)
        messages = [entry.message for entry in logs]
        if any(expect in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def test_pipeline_trains_with_two_torchrun_processes(tmp_path, monkeypatch, prefect_client):
    from ctxvec_flows.pipeline import pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    corpus = write_corpus(tmp_path / "corpus", 120)  # about 45 documents: enough for 2 ranks
    home = tmp_path / "home"
    overrides = [*small_run_overrides(corpus), "train.nproc_per_node=2", "train.steps=6"]
    state = pipeline(str(TINY), overrides, str(home), return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    train_run = task_runs(state.state_details.flow_run_id)["train"]
    messages = _task_log(train_run.id, "[rank 0] ctxvec.train.run")

    manifest = json.loads((Path(out["train"]["run_dir"]) / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["steps"] == out["train"]["steps"] == 6
    assert Path(out["train"]["model_dir"], "model.safetensors").is_file()
    # the ranks' output streamed into the task's log: rank 0 trained, no rank ran a data stage
    assert any("INFO [rank 0] ctxvec.train.run" in m for m in messages), messages[-20:]
    assert not any("INFO [rank 1]" in m for m in messages)
    assert not any(f"ctxvec.{stage}" in m for m in messages
                   for stage in ("ingest", "tokenizer.trainer", "tokenizer.packing"))
    # downstream as usual: registered, embedded, indexed, promoted, queried
    assert out["model"]["version"] == "1" and out["champion"] == "1"
    index = json.loads((Path(out["index"]["path"]) / "manifest.json").read_text())
    assert index["count"] == out["embeddings"]["rows"] > 0 and index["model_version"] == "1"
    assert out["sample_query"]["hits"]
    # the same recipe on the same data again: the finished run is reused, nothing is launched
    launched: list[str] = []
    again = train_with_launch(load_config(TINY, overrides), Workspace(home),
                              Snapshot(**out["snapshot"]), TokenizerArtifact(**out["tokenizer"]),
                              PackedData(**out["pack"]), on_line=launched.append)
    assert again.to_dict() == out["train"] and launched == []


def test_a_rank_failing_on_bad_input_raises_that_error(tmp_path):
    """No tokenizer for a scratch model: every rank stops with a ConfigError, which the launcher
    raises again as a UserInputError with the rank's message."""
    cfg = load_config(TINY, ["train.nproc_per_node=2", "evaluate.sts=null"])
    ws = Workspace(tmp_path / "home").ensure()
    lines: list[str] = []
    with pytest.raises(UserInputError, match="model.init=scratch needs a tokenizer"):
        launch(cfg, ws, None, None, None, 2, on_line=lines.append)
    assert any("needs a tokenizer" in line for line in lines)  # the ranks' output was streamed
    assert not ws.runs.exists() or not any(ws.runs.iterdir())  # nothing trained, nothing written
