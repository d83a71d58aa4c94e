"""Every registry call the stage graph makes, in one file.

The stages register versions, link indexes, move the champion alias and resolve ``models:/``
references (for ``model.init`` and for embedding with a registered model) only through these
functions, so the graph holds one seam to the registry layer. Training and model loading below
it receive local folders (``local_model_dir``).
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
from ctxvec.model import refs as model_refs
from ctxvec.refs import ModelRef
from ctxvec.registry import ModelVersion, Registry
from ctxvec.workspace import Workspace


def is_registry_ref(ref: str | ModelRef) -> bool:
    return ModelRef.parse(ref).is_registry


def version_info(ws: Workspace, ref: str | ModelRef) -> ModelVersion:
    """One registry version (an alias resolved to the version it names now)."""
    return Registry(ws).resolve(ref)


def local_model_dir(ws: Workspace, ref: str | ModelRef | ModelVersion) -> Path:
    """A local folder for any reference; a registry version downloaded once into the cache
    (``minilm`` and folders never open the registry)."""
    if isinstance(ref, ModelVersion) or ModelRef.parse(ref).is_registry:
        return Registry(ws).local_dir(ref)
    return model_refs.local_model_dir(ref)


def register(cfg: CtxvecConfig, ws: Workspace, snap: Snapshot | None,
             tok: TokenizerArtifact | None, trained: TrainedModel,
             report: EvalReport) -> RegisteredModel:
    # a re-run of the stage after a kill between its register and its record finds the
    # version instead of registering the same weights twice
    return Registry(ws).register(cfg, snap, tok, trained, report, reuse=True)


def link_index(ws: Workspace, name: str, version: str, idx: IndexArtifact) -> None:
    """Tag the version with its index, so a server can find the pair."""
    Registry(ws).attach_index(name, version, idx)


def champion(ws: Workspace, name: str) -> ModelVersion | None:
    """The version ``champion`` names now, or None (no champion, or no such model yet)."""
    registry = Registry(ws)
    version = registry.alias_version(name, "champion")
    return registry.resolve(ModelRef.registered(name, version=version)) if version else None


def set_tags(ws: Workspace, name: str, version: str, tags: dict[str, str]) -> None:
    Registry(ws).set_tags(name, version, tags)


def move_champion(ws: Workspace, name: str, version: str) -> str | None:
    """Point ``champion`` at the version; -> the version it pointed at before."""
    return Registry(ws).promote(name, version, "champion")


def linked_index_uri(ws: Workspace, name: str, version: str) -> str | None:
    return Registry(ws).resolve(ModelRef.registered(name, version=version)).index_uri
