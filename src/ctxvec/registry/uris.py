"""Which MLflow a workspace talks to, and the one place ctxvec sets MLflow's process-wide URIs.

Embedded default: with no ``MLFLOW_TRACKING_URI`` set, tracking and the registry live in
``sqlite:///$CTXVEC_HOME/mlflow.db`` with artifacts under ``$CTXVEC_HOME/mlartifacts``. Pointing
``MLFLOW_TRACKING_URI`` (and optionally ``MLFLOW_REGISTRY_URI``) at a server changes nothing else.

Everything ctxvec does through an ``MlflowClient`` bound to those URIs, except logging a model:
``mlflow.pyfunc.log_model`` (and the run it logs into) exists only as a fluent API that reads the
process-wide tracking and registry URIs. ``fluent_uris`` points them at one workspace for the
duration of that block, under a lock, and then puts back exactly what was there (the module
values and the ``MLFLOW_*_URI`` variables that ``set_*_uri`` also export), so that two
workspaces in one process never see each other's store.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ctxvec.workspace import Workspace

_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_FLUENT_LOCK = threading.RLock()


@dataclass(frozen=True)
class MlflowUris:
    tracking: str
    registry: str
    from_env: bool  # the user named a server: MLflow, not ctxvec, decides artifact locations


def workspace_uris(ws: Workspace) -> MlflowUris:
    """The tracking and registry URIs for ``ws``: the environment's, else the embedded SQLite."""
    env_tracking = os.environ.get("MLFLOW_TRACKING_URI")
    tracking = env_tracking or ws.mlflow_uri
    return MlflowUris(tracking, os.environ.get("MLFLOW_REGISTRY_URI") or tracking,
                      bool(env_tracking))


@contextmanager
def fluent_uris(uris: MlflowUris) -> Iterator[None]:
    """MLflow's fluent APIs pointed at ``uris`` inside the block, and restored after it."""
    # lazy: mlflow takes seconds to import; only the registry's own modules import it
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _FLUENT_LOCK:
        env = {k: os.environ.get(k) for k in _ENV}
        before = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        tracking_utils.set_tracking_uri(uris.tracking)
        registry_utils.set_registry_uri(uris.registry)
        try:
            yield
        finally:
            tracking_utils.set_tracking_uri(before[0])
            registry_utils.set_registry_uri(before[1])
            for key, value in env.items():  # set_*_uri export (or unset) these: undo that
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
