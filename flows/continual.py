"""The continual update as a Prefect flow: one task per declared stage of the update
(``ctxvec.stages.continual``).

ingest (only what is new) -> plan -> split -> train from the champion (replay + regulariser) ->
evaluate champion and challenger on old and new held-out data -> register the challenger ->
gate -> deploy (embed, index, switch the champion alias, drift report)

Run it with ``ctxvec update --config RECIPE``, ``python flows/continual.py RECIPE [key=value ...]``
or a deployment whose entrypoint is ``flows/continual.py:continual`` (``ctxvec schedule``). Every
step can be re-run: after a crash the next run resumes training, finds the registered challenger
by its update key, reuses finished embeddings and moves the alias only to a complete pair.
"""

from __future__ import annotations

import sys

from ctxvec_flows.observe import ctxvec_logs, publish_continual, recording
from ctxvec_flows.tasks import prefect_call, stage_tasks
from prefect import flow

from ctxvec import stages
from ctxvec.config import load_config
from ctxvec.workspace import Workspace

TASKS = stage_tasks(stages.CONTINUAL_STAGES)


@flow(name="ctxvec-continual")
def continual(config: str, overrides: list[str] | None = None, home: str | None = None) -> dict:
    """Update the champion with the documents it has not seen; promote it only through the
    gate. ``home``: the workspace (default ``$CTXVEC_HOME``). ctxvec's log lines go to the task
    runs' logs; the outcome, the gate's checks and the MLflow run become artifacts of the flow
    run (``flows/observe.py``)."""
    with ctxvec_logs():
        cfg = load_config(config, overrides)
        # a folder or a store URI (s3://bucket/prefix): Workspace.at tells them apart
        ws = (Workspace.at(home) if home else Workspace.from_env()).ensure()
        records: dict = {}
        with ws.lock(f"the ctxvec-continual flow on {config}"):  # the writer lock
            out = stages.run_continual(cfg, ws, call=recording(prefect_call(TASKS), records))
        publish_continual(cfg, ws, out, records)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python flows/continual.py CONFIG.yaml [key=value ...]")
    print(continual(sys.argv[1], sys.argv[2:]))
