"""``Registry(ws)``: the model registry of one workspace, on MLflow.

It holds one ``MlflowClient`` bound to the workspace's tracking and registry URIs (see
``uris.workspace_uris``) and never re-points MLflow's process-wide URIs per call, so two
workspaces can be used side by side in one process. A reference is resolved once
(``resolve``: an alias followed to its version, one registry read) and the resulting
``ModelVersion`` is what callers pass on; ``local_dir`` turns any reference, or a version already
resolved, into a local encoder folder, downloading a registry version once into the workspace
cache.
"""

from __future__ import annotations

import json
import logging
import time
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
from ctxvec.embed.precision import PRECISION_TAG, PrecisionMismatchError, recorded
from ctxvec.model.refs import local_model_dir
from ctxvec.refs import ModelRef, ModelRefError
from ctxvec.registry import aliases
from ctxvec.registry.download import (
    cached_version_dir,
    download_version,
    encoder_dir,
    version_source,
)
from ctxvec.registry.register import register_model
from ctxvec.registry.sqlite_store import ensure_store
from ctxvec.registry.uris import workspace_uris
from ctxvec.registry.version import ModelVersion
from ctxvec.workspace import Workspace

log = logging.getLogger(__name__)


def _version(mv, aliases_: list[str] | None = None) -> ModelVersion:
    return ModelVersion(mv.name, str(mv.version), dict(mv.tags),
                        list(mv.aliases) if aliases_ is None else aliases_, mv.run_id)


class Registry:
    """The registry of ``ws``: resolve, download, register, tag, promote and roll back."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.uris = workspace_uris(ws)
        if not self.uris.from_env:  # the embedded store: complete, and this workspace's own
            # in a workspace that exists: a reader run in the wrong folder must not make one
            ensure_store(ws.require().root)
        # lazy: mlflow takes seconds to import and the CLI imports this module at start-up
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uris.tracking,
                                   registry_uri=self.uris.registry)

    # --- reading ----------------------------------------------------------------------------

    def resolve(self, ref: str | ModelRef | ModelVersion) -> ModelVersion:
        """The one version ``ref`` names now (an alias followed), with its tags and aliases:
        one registry read. A ``ModelVersion`` comes back as it is."""
        if isinstance(ref, ModelVersion):
            return ref
        from mlflow.exceptions import MlflowException  # lazy: mlflow is heavy (see __init__)

        mref = ModelRef.parse(ref)
        if not mref.is_registry:
            raise ModelRefError(f"{mref} is not a registry reference: use "
                                "models:/<name>@<alias> or models:/<name>/<n>")
        try:
            mv = (self.client.get_model_version(mref.name, mref.version) if mref.is_pinned
                  else self.client.get_model_version_by_alias(mref.name, mref.alias))
        except MlflowException as e:
            raise ModelRefError(f"{mref}: not in the registry at {self.uris.tracking} "
                                f"({e.error_code})") from None
        return _version(mv)

    def local_dir(self, ref: str | ModelRef | ModelVersion) -> Path:
        """A local encoder folder for any reference: ``minilm`` and folders as they are, a
        registry version downloaded once into the workspace cache. A pinned version already in
        the cache needs no registry read (versions never change); an alias is resolved once."""
        if isinstance(ref, ModelVersion):
            name, version = ref.name, ref.version
        else:
            mref = ModelRef.parse(ref)
            if not mref.is_registry:
                return local_model_dir(mref)
            assert mref.name is not None
            if mref.is_pinned and cached_version_dir(self.ws.model_cache, mref.name,
                                                     str(mref.version)).is_dir():
                name, version = mref.name, str(mref.version)
            else:
                info = self.resolve(mref)
                name, version = info.name, info.version
        root = download_version(self.client, self.uris, self.ws.model_cache, name, version)
        return encoder_dir(root, f"{ModelRef.registered(name, version=version)}")

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points at, or None (no such alias or model)."""
        from mlflow.exceptions import MlflowException  # lazy: mlflow is heavy (see __init__)

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of a registered model, newest first, with its tags and aliases."""
        from mlflow.exceptions import MlflowException  # lazy: mlflow is heavy (see __init__)

        try:
            by_alias = self.client.get_registered_model(name).aliases  # search leaves them empty
        except MlflowException as e:
            raise ModelRefError(f"no registered model {name!r} in the registry at "
                                f"{self.uris.tracking} ({e.error_code})") from None
        found: dict[str, list[str]] = {}
        for alias, version in by_alias.items():
            found.setdefault(str(version), []).append(alias)
        versions = self.client.search_model_versions(f"name='{name}'")
        return sorted((_version(mv, sorted(found.get(str(mv.version), []))) for mv in versions),
                      key=lambda v: -int(v.version))

    def version_with_tag(self, name: str, tag: str, value: str) -> ModelVersion | None:
        """The newest version whose tag ``tag`` equals ``value`` (e.g. the continual update that
        a re-run must pick up instead of registering it twice)."""
        try:
            versions = self.list_versions(name)
        except ModelRefError:
            return None
        return next((v for v in versions if v.tags.get(tag) == value), None)

    def details(self, name: str, version: str) -> dict:
        """One version as ``ctxvec models show`` prints it: tags, aliases, its run's metrics and
        parameters, its index manifest, and where its model is: ``artifact_uri`` in MLflow's
        store and ``model_dir``, the local encoder folder once it is in the workspace cache
        (None before: showing a version downloads nothing)."""
        info = self.resolve(ModelRef.registered(name, version=version))
        run = self.client.get_run(info.run_id) if info.run_id else None
        index_uri = info.index_uri
        index = None
        m = self.ws.stage_manifest(index_uri) if index_uri else None
        if m is not None:
            index = {k: m.get(k) for k in ("factory", "count", "dim", "recall_at_10", "bm25",
                                           "senses", "build_seconds", "created_at")}
        drift = info.tags.get("drift")
        cached = cached_version_dir(self.ws.model_cache, name, info.version)
        return {
            "name": name, "version": info.version, "aliases": info.aliases, "tags": info.tags,
            "run_id": info.run_id,
            "metrics": dict(run.data.metrics) if run else {},
            "params": dict(run.data.params) if run else {},
            "index": index, "index_uri": index_uri,
            "drift": json.loads(drift) if drift else None,
            "artifact_uri": version_source(self.client, name, info.version),
            "model_dir": str(encoder_dir(cached, str(info.ref))) if cached.is_dir() else None,
        }

    # --- writing ----------------------------------------------------------------------------

    def register(self, cfg: CtxvecConfig, snapshot: Snapshot | None,
                 tokenizer_art: TokenizerArtifact | None, trained: TrainedModel,
                 report: EvalReport, reuse: bool = False) -> RegisteredModel:
        """Log the run and the pyfunc model; register a new version (alias ``challenger``).
        ``reuse``: the version an earlier, finished register of the same trained model made,
        if there is one, rather than a second version of the same weights."""
        return register_model(self, cfg, snapshot, tokenizer_art, trained, report, reuse)

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(name, version, k, str(v))

    def attach_index(self, name: str, version: str, index: IndexArtifact) -> None:
        """Link a version to its embeddings and index (tags), so a server can find its pair.
        An index embedded in another precision than the version records (its pyfunc runs in
        that one) is refused: the pyfunc's vectors would not match the index's."""
        manifest = self.ws.stage_manifest(index.path) or {}
        index_precision = recorded(manifest.get("precision"))
        version_precision = recorded(
            self.client.get_model_version(name, version).tags.get(PRECISION_TAG))
        if index_precision and version_precision and index_precision != version_precision:
            raise PrecisionMismatchError(
                f"index {index.path} was embedded in {index_precision}, but version {version} of "
                f"{name} records {version_precision} (its pyfunc model runs in it): embed it "
                f"with embed.precision={version_precision} (or auto), or register the model "
                "again to embed it in another precision")
        self.set_tags(name, version, {
            # a store URI for a remote workspace: another machine, with an empty cache, can
            # fetch it
            "index_uri": self.ws.uri_for(index.path),
            "index.recall_at_10": f"{index.recall_at_10:.4f}",
            "index.count": str(index.count),
            **({PRECISION_TAG: index_precision} if index_precision else {}),
        })

    def embed_precision(self, info: ModelVersion) -> str | None:
        """The precision a version's vectors are embedded in: its tag ``embed.precision``
        (recorded at register, checked when an index is attached), else its index manifest's;
        None for a version from before precisions were recorded, with no index."""
        tagged = recorded(info.tags.get(PRECISION_TAG))
        if tagged is not None or not info.index_uri:
            return tagged
        return recorded((self.ws.stage_manifest(info.index_uri) or {}).get("precision"))

    def set_drift(self, name: str, version: str, report: dict) -> None:
        """Keep a drift report with the version (tag ``drift``) and log its numbers to its run."""
        from mlflow.entities import Metric  # lazy: mlflow is heavy (see __init__)

        self.client.set_model_version_tag(name, version, "drift", json.dumps(report))
        run_id = self.client.get_model_version(name, version).run_id
        if run_id:
            ts = int(time.time() * 1000)
            numbers = {f"drift/{k}": v for k, v in report.items() if isinstance(v, float)}
            numbers |= {f"drift/delta/{k}": v for k, v in report["eval_deltas"].items()}
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0)
                                                   for k, v in numbers.items()])

    def promote(self, name: str, version: str, alias: str = aliases.CHAMPION) -> str | None:
        """Point ``alias`` at ``version``; -> the version it pointed at before, if any."""
        return aliases.promote(self, name, version, alias)

    def rollback(self, name: str) -> tuple[str, str]:
        """Point ``champion`` back at the previous champion; -> (from, to)."""
        return aliases.rollback(self, name)
