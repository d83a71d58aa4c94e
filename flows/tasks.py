"""Prefect tasks over the declared stages of ``ctxvec.stages``: one generic wrapper, so a stage
declared once is a task with the stage's name (ingest, tokenizer, ..., sample-query; plan, gate,
deploy in the continual flow), its retries, its tags and, for a keyed stage, a cache whose key is
the stage's own (``caching.StageCache``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ctxvec_flows import caching  # installed with ctxvec, so found however this file is loaded
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from ctxvec.config import CtxvecConfig
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
        # a streaming stage (train under torchrun) sends its ranks' lines to the task's log
        on_line = get_run_logger().info if stage.streams else None
        return run_stage(stage, cfg, ws, records, on_line=on_line)

    # one task key per stage (Prefect derives it from the function's qualified name)
    run.__name__ = run.__qualname__ = f"{stage.name.replace('-', '_')}_task"
    cache = ({"cache_policy": caching.StageCache(stage=stage), "persist_result": True}
             if stage.keyed is not None else {"cache_policy": NO_CACHE})
    return task(name=stage.name, tags=list(stage.tags), **_RETRIES[stage.kind], **cache)(run)


def stage_tasks(stages: Iterable[Stage]) -> dict[str, Task]:
    return {s.name: stage_task(s) for s in stages}


def prefect_call(tasks: dict[str, Task], ws: Workspace) -> Call:
    """A ``call`` for ``ctxvec.stages.execute`` that runs each stage as its task, with cached
    results kept in this run's workspace."""
    storage = caching.results_dir(ws)

    def call(stage: Stage, cfg: CtxvecConfig, ws: Workspace, records: tuple) -> Any:
        t = tasks[stage.name]
        if stage.keyed is not None:
            t = t.with_options(result_storage=storage)
        return t(cfg, ws, records)

    return call
