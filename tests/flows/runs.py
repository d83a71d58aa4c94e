"""What the flow tests share: a small corpus that one ingest reads completely (a second ingest
finds nothing new and names the same corpus, so the stages after it can be cached), and the task
runs of a flow run as the Prefect API recorded them."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from tests.helpers import REPO


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


def task_runs(flow_run_id) -> dict:
    """Task name (ingest, train, ...) -> its task run in flow run ``flow_run_id``, from the
    Prefect API of the current settings."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=100)
    return {r.name.rsplit("-", 1)[0]: r for r in runs}  # task run names: <task>-<3 hex>
