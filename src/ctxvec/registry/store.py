"""The registry's old module-level functions, each a thin forwarder onto ``Registry``.

forwarder: removed once callers use Registry. Every function here builds a ``Registry(ws)`` and
calls the method of the same meaning; new code uses ``ctxvec.registry.Registry`` directly and
keeps one per workspace.
"""

from __future__ import annotations

from pathlib import Path

from ctxvec.artifacts import (
    EvalReport,
    IndexArtifact,
    RegisteredModel,
    Snapshot,
    TokenizerArtifact,
    TrainedModel,
)
from ctxvec.config import CtxvecConfig
from ctxvec.refs import ModelRef, ModelRefError
from ctxvec.registry.aliases import HISTORY_TAG
from ctxvec.registry.download import ENCODER_ARTIFACT
from ctxvec.registry.register import PYFUNC_CODE
from ctxvec.registry.registry import Registry
from ctxvec.registry.version import ModelVersion, VersionInfo
from ctxvec.workspace import Workspace

__all__ = ["ENCODER_ARTIFACT", "HISTORY_TAG", "PYFUNC_CODE", "ModelVersion", "VersionInfo",
           "alias_version", "attach_index", "client", "get_version", "list_versions",
           "materialize", "parse_ref", "promote", "register_model", "rollback", "set_drift",
           "set_version_tags", "version_details", "version_with_tag"]


def client(ws: Workspace):  # forwarder: removed once callers use Registry
    return Registry(ws).client


def parse_ref(ref: str | ModelRef) -> tuple[str, str | None, str | None]:
    # forwarder: removed once callers use ModelRef.parse
    mref = ModelRef.parse(ref)
    if not mref.is_registry:
        raise ModelRefError(f"bad registry reference {str(ref)!r}: use models:/<name>@<alias> "
                            "or models:/<name>/<n>")
    assert mref.name is not None
    return mref.name, mref.alias, mref.version


def get_version(ws: Workspace, ref: str | ModelRef) -> ModelVersion:
    # forwarder: removed once callers use Registry
    return Registry(ws).resolve(ref)


def materialize(ref: str | ModelRef, ws: Workspace | Path | None = None) -> Path:
    """forwarder: removed once callers use Registry. Pass the Workspace: a bare root path loses
    the store URI of a remote workspace."""
    if not isinstance(ws, Workspace):
        ws = Workspace(ws) if ws else Workspace.from_env()
    return Registry(ws).local_dir(ref)


def register_model(cfg: CtxvecConfig, ws: Workspace, snapshot: Snapshot | None,
                   tokenizer_art: TokenizerArtifact | None, trained: TrainedModel,
                   report: EvalReport) -> RegisteredModel:
    # forwarder: removed once callers use Registry
    return Registry(ws).register(cfg, snapshot, tokenizer_art, trained, report)


def attach_index(ws: Workspace, name: str, version: str, index: IndexArtifact) -> None:
    # forwarder: removed once callers use Registry
    Registry(ws).attach_index(name, version, index)


def promote(ws: Workspace, name: str, version: str, alias: str = "champion") -> str | None:
    # forwarder: removed once callers use Registry
    return Registry(ws).promote(name, version, alias)


def rollback(ws: Workspace, name: str) -> tuple[str, str]:
    # forwarder: removed once callers use Registry
    return Registry(ws).rollback(name)


def set_drift(ws: Workspace, name: str, version: str, report: dict) -> None:
    # forwarder: removed once callers use Registry
    Registry(ws).set_drift(name, version, report)


def set_version_tags(ws: Workspace, name: str, version: str, tags: dict[str, str]) -> None:
    # forwarder: removed once callers use Registry
    Registry(ws).set_tags(name, version, tags)


def alias_version(ws: Workspace, name: str, alias: str) -> str | None:
    # forwarder: removed once callers use Registry
    return Registry(ws).alias_version(name, alias)


def version_with_tag(ws: Workspace, name: str, tag: str, value: str) -> ModelVersion | None:
    # forwarder: removed once callers use Registry
    return Registry(ws).version_with_tag(name, tag, value)


def version_details(ws: Workspace, name: str, version: str) -> dict:
    # forwarder: removed once callers use Registry
    return Registry(ws).details(name, version)


def list_versions(ws: Workspace, name: str) -> list[ModelVersion]:
    # forwarder: removed once callers use Registry
    return Registry(ws).list_versions(name)
