"""Prefect tasks over the declared stages of ``ctxvec.stages``: one generic wrapper, so a stage
declared once is a task with the stage's name (ingest, tokenizer, ..., sample-query; plan, gate,
deploy in the continual flow), its retries, its tags and, for a keyed stage, a cache whose key is
the stage's own (``caching``: JSON records that ctxvec reads and writes itself; Prefect persists
no results of these tasks)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ctxvec_flows import caching  # installed with ctxvec, so found however this file is loaded
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.states import Completed

from ctxvec.config import CtxvecConfig
from ctxvec.faults import crash_point
from ctxvec.stages import Call, Stage, run_stage
from ctxvec.workspace import Workspace

# Stages write atomically and are cheap to re-check, so a transient failure (a locked SQLite
# file, a busy disk) is retried; compute stages (training above all) are not: their failures
# are not transient.
_RETRIES = {"io": {"retries": 2, "retry_delay_seconds": 2}, "compute": {"retries": 0}}


def stage_task(stage: Stage) -> Task:
    """The Prefect task that runs ``stage`` (named after it; cached under its key if it has
    one)."""

    def run(cfg: CtxvecConfig, ws: Workspace, records: tuple) -> Any:
        log = get_run_logger()
        key, reason = stage.key_and_reason(cfg, ws, *records)
        if key is not None:
            hit, key = caching.lookup(stage, ws, key, log)
            if hit is not None:
                return Completed(data=hit, name="Cached")
        elif stage.keyed is not None:
            log.info("%s: not cached: %s", stage.name, reason)
        # a streaming stage (train under torchrun) sends its ranks' lines to the task's log
        record = run_stage(stage, cfg, ws, records, on_line=log.info if stage.streams else None)
        crash_point(f"stage-ran:{stage.name}")  # its output is written, its record not cached
        if key is not None:
            caching.store(ws, key, record)
        return record

    # one task key per stage (Prefect derives it from the function's qualified name)
    run.__name__ = run.__qualname__ = f"{stage.name.replace('-', '_')}_task"
    return task(name=stage.name, tags=list(stage.tags), cache_policy=NO_CACHE,
                persist_result=False, **_RETRIES[stage.kind])(run)


def stage_tasks(stages: Iterable[Stage]) -> dict[str, Task]:
    return {s.name: stage_task(s) for s in stages}


def prefect_call(tasks: dict[str, Task]) -> Call:
    """A ``call`` for ``ctxvec.stages.execute`` that runs each stage as its task (a keyed
    stage's record cached in the workspace the task is handed)."""

    def call(stage: Stage, cfg: CtxvecConfig, ws: Workspace, records: tuple) -> Any:
        # the record out of the final state: a cache hit returns a state of its own
        return tasks[stage.name](cfg, ws, records, return_state=True).result()

    return call
