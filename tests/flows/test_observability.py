"""What a flow run shows in Prefect (flows/observe.py), read back from the session's real Prefect
server: ctxvec's own log lines under the task runs that logged them, each once, and the run's
artifacts (its stage counts and metrics, its MLflow run). The pipeline run is the one
tests/flows/test_caching.py starts from (``small_pipeline_run``): no run of its own. The
continual update's artifacts are checked where its tests run it (tests/flows/test_continual.py).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from ctxvec.stages import report
from tests.flows.runs import flow_artifacts, flow_logs, task_runs

NAME = "ctxvec.tests.observe"


class _Lines(logging.Handler):
    """The messages of logger ``NAME`` that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == NAME:
            self.lines.append(record.getMessage())


def test_ctxvec_lines_reach_the_run_logs_once_and_the_handler_goes(prefect_client):
    from ctxvec_flows.observe import ctxvec_logs
    from prefect import flow, task
    from prefect.logging.handlers import APILogHandler

    log = logging.getLogger(NAME)

    @task(name="counting")
    def counting() -> None:
        log.info("counted %d things", 7)
        pool = threading.Thread(target=log.info, args=("from a thread %s", "without context"))
        pool.start()
        pool.join()

    @flow(name="observed")
    def observed() -> None:
        with ctxvec_logs():
            log.info("between tasks")
            counting()
        log.info("after the flow's block")  # not sent: the handler is gone

    ctxvec, root, console = logging.getLogger("ctxvec"), logging.getLogger(), _Lines()
    before = ctxvec.level
    ctxvec.setLevel(logging.NOTSET)  # as in a worker that never configured logging
    root.addHandler(console)  # where the console handlers are (the CLI's, Prefect's)
    try:
        state = observed(return_state=True)
        assert ctxvec.level == logging.NOTSET
        assert not any(isinstance(h, APILogHandler) for h in ctxvec.handlers)
    finally:
        root.removeHandler(console)
        ctxvec.setLevel(before)
    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id
    task_run = task_runs(flow_run_id, expect=("counting",))["counting"]
    sent = [(x.message, x.task_run_id) for x in flow_logs(flow_run_id) if x.name == NAME]
    assert sorted(sent, key=str) == sorted([
        ("between tasks", None),  # filed under the flow run
        ("counted 7 things", task_run.id),  # under its task run
        ("from a thread without context", None),  # no context: under the flow run
    ], key=str)
    # the handler sends to the API only: the console handlers got each line once, and nothing
    # of ctxvec's below WARNING once the level was back
    assert sorted(console.lines) == ["between tasks", "counted 7 things",
                                     "from a thread without context"]


def test_pipeline_run_shows_ctxvec_lines_under_each_task(small_pipeline_run, prefect_client):
    r, s = small_pipeline_run, small_pipeline_run.summary
    names = {t.id: name for name, t in task_runs(r.flow_run_id).items()}
    lines = defaultdict(list)
    for x in flow_logs(r.flow_run_id):
        if x.name.startswith("ctxvec."):
            lines[names.get(x.task_run_id)].append(x.message)
    snap, emb, idx = s["snapshot"], s["embeddings"], s["index"]
    assert any(m.startswith(f"ingest: snapshot {snap['snapshot_id']}: read {snap['read']}, "
                            f"kept {snap['kept']}") for m in lines["ingest"]), lines["ingest"]
    # the training losses (tiny.yaml: 12 steps, one line every 4)
    losses = [m.split()[2] for m in lines["train"] if m.startswith("train: step ")
              and " loss " in m]
    assert losses == ["4/12", "8/12", "12/12"], lines["train"]
    for metric, value in s["evaluate"]["metrics"].items():
        assert f"evaluate: {metric} = {value:.4f}" in lines["evaluate"]
    assert f"register: ctxvec-encoder version 1 (run {s['model']['run_id']})" in lines["register"]
    assert any(m.startswith(f"embed: {emb['rows']} chunks from {emb['docs']} documents")
               for m in lines["embed"]), lines["embed"]
    assert any(m.startswith(f"index: Flat over {idx['count']} vectors") for m in lines["index"])
    for task, messages in lines.items():  # each line once, not once per handler
        assert len(messages) == len(set(messages)), (task, messages)


def test_pipeline_run_has_its_summary_and_mlflow_artifacts(small_pipeline_run, prefect_client):
    r, s = small_pipeline_run, small_pipeline_run.summary
    arts = flow_artifacts(r.flow_run_id)
    assert set(arts) == {"ctxvec-encoder-pipeline", "ctxvec-encoder-mlflow"}
    summary = arts["ctxvec-encoder-pipeline"]
    assert summary.type == "markdown"
    assert summary.data == report.pipeline_markdown(s, "ctxvec-pipeline: tiny")
    assert f"kept {s['snapshot']['kept']} of" in summary.data
    assert "| register | `models:/ctxvec-encoder/1`" in summary.data
    mlflow = arts["ctxvec-encoder-mlflow"].data
    db = f"sqlite:///{r.home / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri '{db}'" in mlflow
    assert f"<http://127.0.0.1:5000/#/runs/{s['model']['run_id']}>" in mlflow
