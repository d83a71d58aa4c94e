"""Prefect caching for the declared stages: a stage whose inputs did not change is not run again.

The cache key of a stage's task is the stage's own idempotence key (``Stage.key`` in
``ctxvec.stages``: its name, config sections, upstream records, fingerprints of the files they
point at, and what else it declares), so whether a stage is already done is decided in one
place, for Prefect and for everything else. This module only adds what belongs to Prefect:

The cached value (the stage's record) is persisted under ``<home>/prefect-results`` and is used
only while the stage says it is reusable (``Stage.reusable``: the files it points at exist; for
``register``, the registry still holds the version, made by the same MLflow run). A cached value
that fails that check is superseded: the key moves to a successor key (a hash of the old one),
the stage runs again, and its new result is stored there; the next run follows the same chain to
it.

Not cached: stages without a key (ingest, promote, the sample query, the continual update's
stages) and runs the stage declines to key (training with ``train.resume=false``, a tokenizer
taken from a model). ``PREFECT_TASKS_REFRESH_CACHE=true`` runs every stage again and overwrites
what is cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from ctxvec.stages import Stage
from ctxvec.stages.keys import digest
from ctxvec.workspace import Workspace

RESULTS_DIR = "prefect-results"  # under the workspace root
_MAX_SUPERSEDED = 100


def results_dir(ws: Workspace) -> Path:
    return ws.root / RESULTS_DIR


@dataclass
class StageCache(CachePolicy):
    """The cache policy of one declared stage's task: its key is ``Stage.key`` of the task's
    inputs (``cfg``, ``ws`` and the upstream ``records``)."""

    stage: Stage | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        assert self.stage is not None
        key, reason = self.stage.key_and_reason(inputs["cfg"], inputs["ws"], *inputs["records"])
        if key is None:
            get_run_logger().info("%s: not cached: %s", self.stage.name, reason)
            return None
        return self._first_usable(task_ctx, key, inputs["ws"])

    def _first_usable(self, task_ctx: TaskRunContext, key: str, ws: Workspace) -> str:
        """``key``, or its first successor whose cached value is usable or absent."""
        assert self.stage is not None
        store = task_ctx.result_store
        for _ in range(_MAX_SUPERSEDED):
            if not store.exists(key):
                return key
            try:
                usable = self.stage.reusable(store.read(key).result, ws)
            except Exception as e:  # unreadable (another ctxvec version's pickle): not usable
                get_run_logger().debug("%s: cached result %s unreadable: %s", self.stage.name,
                                       key, e)
                usable = False
            if usable:
                return key
            get_run_logger().info("%s: the cached result points at files or a model version "
                                  "that are gone; running the stage again", self.stage.name)
            key = digest(key, "superseded")
        return key
