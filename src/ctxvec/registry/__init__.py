"""The model registry on MLflow: the only package in ctxvec that imports mlflow.

``Registry(ws)`` is the entry point; ``ModelVersion`` is a version it resolved.
"""

from __future__ import annotations

from ctxvec.registry.registry import Registry
from ctxvec.registry.version import ModelVersion

__all__ = ["ModelVersion", "Registry"]
