"""The ctxvec pipeline as a Prefect flow: one task per declared stage of ``ctxvec.stages``.

ingest -> tokenizer -> pack -> train -> evaluate -> register -> embed -> index -> promote
-> sample query

Run it with ``ctxvec run --config configs/tiny.yaml``, or with Prefect directly:
``python flows/pipeline.py configs/tiny.yaml`` or a deployment whose entrypoint is
``flows/pipeline.py:pipeline``. With no ``PREFECT_API_URL`` set, Prefect runs it against its local
ephemeral server; with one set, the same code reports to that server.

Which stages run is the graph's decision (``ctxvec.stages.plan``), the same the CLI's pretrain
and finetune take. Stages whose inputs did not change are not run again: their results are
cached in the workspace (``<home>/prefect-results``) under the stage's own key; see
``flows/caching.py``. Ingest always runs (new files may have landed); it is incremental by itself.
"""

from __future__ import annotations

import sys

from ctxvec_flows.observe import ctxvec_logs, publish_pipeline, recording
from ctxvec_flows.tasks import prefect_call, stage_tasks
from prefect import flow

from ctxvec import stages
from ctxvec.config import load_config
from ctxvec.workspace import Workspace

GPU_TRAIN_TAG = stages.GPU_TRAIN_TAG
TASKS = stage_tasks(stages.STAGES)
# the tasks by name, as other code and tests import them
ingest_task, tokenizer_task, pack_task = TASKS["ingest"], TASKS["tokenizer"], TASKS["pack"]
train_task, evaluate_task, register_task = TASKS["train"], TASKS["evaluate"], TASKS["register"]
embed_task, index_task, promote_task = TASKS["embed"], TASKS["index"], TASKS["promote"]
sample_query_task = TASKS["sample-query"]


@flow(name="ctxvec-pipeline")
def pipeline(config: str, overrides: list[str] | None = None, home: str | None = None) -> dict:
    """Run every stage of a recipe into the workspace ``home`` (default: ``$CTXVEC_HOME``).
    ctxvec's log lines go to the task runs' logs; the run's counts, metrics and MLflow run become
    artifacts of the flow run (``flows/observe.py``)."""
    with ctxvec_logs():
        cfg = load_config(config, overrides)
        # a folder or a store URI (s3://bucket/prefix): Workspace.at tells them apart
        ws = (Workspace.at(home) if home else Workspace.from_env()).ensure()
        records: dict = {}
        with ws.lock(f"the ctxvec-pipeline flow on {config}"):  # the writer lock
            summary = stages.run_pipeline(cfg, ws, call=recording(prefect_call(TASKS), records))
        publish_pipeline(cfg, ws, summary, records)
    return summary


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python flows/pipeline.py CONFIG.yaml [key=value ...]")
    print(pipeline(sys.argv[1], sys.argv[2:]))
