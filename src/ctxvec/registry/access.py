"""``RegistryAccess``: what the registry's helper modules use of a ``Registry``.

``Registry`` (registry.py) hands registering (register.py) and aliases (aliases.py) to functions
that take it as their first argument. They name its type through this Protocol instead of
importing registry.py, which imports them, so the modules form no import circle, not even one
that only type hints close.
"""

from __future__ import annotations

from typing import Any, Protocol

from ctxvec.refs import ModelRef
from ctxvec.registry.uris import MlflowUris
from ctxvec.registry.version import ModelVersion
from ctxvec.workspace import Workspace


class RegistryAccess(Protocol):
    client: Any  # an mlflow.MlflowClient: mlflow is imported only when a Registry is made
    uris: MlflowUris
    ws: Workspace

    def resolve(self, ref: str | ModelRef | ModelVersion) -> ModelVersion: ...

    def alias_version(self, name: str, alias: str) -> str | None: ...
