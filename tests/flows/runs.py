"""What the flow tests share: a small corpus that one ingest reads completely (a second ingest
finds nothing new and names the same corpus, so the stages after it can be cached), and the task
runs, logs and artifacts of a flow run as the Prefect API recorded them."""

from __future__ import annotations

import gzip
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import REPO, TINY


def write_corpus(folder: Path, docs: int = 300) -> Path:
    """The first ``docs`` <doc> elements of the demo corpus as one wikiextractor file (about 110
    documents survive ingest's filters); returns ``folder``."""
    text = gzip.open(REPO / "data" / "demo" / "wiki_00.gz", "rt", encoding="utf-8").read()
    blocks = re.findall(r"<doc .*?</doc>\n", text, flags=re.S)[:docs]
    folder.mkdir(parents=True)
    (folder / "wiki.txt").write_text("".join(blocks), encoding="utf-8")
    return folder


def small_run_overrides(corpus: Path) -> list[str]:
    """The tiny recipe on ``corpus``, read whole, without the parts a test of orchestration does
    not need (STS evaluation, word vectors)."""
    return [f'ingest.sources=["{corpus}"]', "ingest.max_docs=null", "evaluate.sts=null",
            "embed.words.enabled=false"]


def task_runs(flow_run_id, expect: tuple[str, ...] = ()) -> dict:
    """Task name (ingest, train, ...) -> its task run in flow run ``flow_run_id``, from the
    Prefect API of the current settings. The server records task runs from the events the flow
    sends, after they arrive: this waits (up to a minute) until the tasks ``expect`` names are
    there and every task run it holds is in a final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=100)
            by_name = {r.name.rsplit("-", 1)[0]: r for r in runs}  # names: <task>-<3 hex>
            done = all(r.state is not None and r.state.is_final() for r in runs)
            if (done and set(expect) <= set(by_name)) or time.monotonic() > deadline:
                return by_name
            time.sleep(0.5)


@dataclass(frozen=True)
class FlowRun:
    home: Path
    overrides: list[str]
    summary: dict[str, Any]
    flow_run_id: Any
    states: dict[str, str]  # task name -> the name of its final state (Completed, Cached)


def run_pipeline_flow(home: Path, overrides: list[str]) -> FlowRun:
    """The tiny recipe's pipeline flow in this process, into workspace ``home``, on the Prefect
    API of the current settings."""
    from ctxvec_flows.pipeline import pipeline

    state = pipeline(str(TINY), overrides, str(home), return_state=True)
    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id
    runs = task_runs(flow_run_id, expect=("ingest", "train", "index", "promote"))
    states = {name: r.state.name for name, r in runs.items()}
    return FlowRun(home, overrides, state.result(), flow_run_id, states)


def flow_logs(flow_run_id) -> list:
    """Every log of flow run ``flow_run_id`` (its task runs' too), oldest first, once the lines
    this process has queued for the API are sent."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # blocks until the queued lines are on the server
    logs, offset = [], 0
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                sort=LogSort.TIMESTAMP_ASC, limit=200, offset=offset)
            logs += page
            offset += len(page)
            if len(page) < 200:
                return logs


def flow_artifacts(flow_run_id) -> dict:
    """Artifact key -> the artifact flow run ``flow_run_id`` created under it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
                any_=[flow_run_id])))
    return {a.key: a for a in found}


def latest_flow_run(flow_name: str, home: Path):
    """The newest run of flow ``flow_name`` on workspace ``home`` (its ``home`` parameter), from
    the Prefect API of the current settings; None if there is none."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=200)
    mine = [r for r in runs if Path(r.parameters.get("home") or "").resolve() == home.resolve()]
    return mine[0] if mine else None
