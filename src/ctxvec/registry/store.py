"""The model registry on MLflow: the only module in ctxvec that imports mlflow.

Embedded default: with no ``MLFLOW_TRACKING_URI`` set, tracking and the registry live in
``sqlite:///$CTXVEC_HOME/mlflow.db`` with artifacts under ``$CTXVEC_HOME/mlartifacts``. Pointing
``MLFLOW_TRACKING_URI`` at a server changes nothing else. A workspace on an object store
(``CTXVEC_HOME=s3://...``) keeps the SQLite file in its local cache and new experiments'
artifacts on the store; ``index_uri`` tags then hold store URIs, read through the workspace.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ctxvec import __version__
from ctxvec.artifacts import (
    EvalReport,
    IndexArtifact,
    RegisteredModel,
    Snapshot,
    TokenizerArtifact,
    TrainedModel,
)
from ctxvec.config import CtxvecConfig, config_to_yaml, flatten
from ctxvec.model.refs import ModelRefError
from ctxvec.workspace import Workspace, home_from_env

log = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
ENCODER_ARTIFACT = "encoder"
_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    tags: dict[str, str]
    aliases: list[str]
    run_id: str | None


def _mlflow(ws: Workspace):
    """Import mlflow pointed at the workspace's embedded store (unless the env names a server)."""
    import mlflow

    user_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    uri = user_env["MLFLOW_TRACKING_URI"] or ws.ensure().mlflow_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(user_env["MLFLOW_REGISTRY_URI"] or uri)
    # set_*_uri also export MLFLOW_*_URI; undo that, so the environment keeps telling what the
    # user configured (and a later call for another workspace is not pinned to this one).
    for key, value in user_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return mlflow


def client(ws: Workspace):
    return _mlflow(ws).MlflowClient()


def _experiment_id(ws: Workspace, name: str) -> str:
    mlflow = _mlflow(ws)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        if not ws.uri:
            ws.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        # not ./mlruns of whatever cwd we run in; on the store for a remote workspace
        location = ws.mlflow_artifact_location
    return mlflow.create_experiment(name, artifact_location=location)


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, "3")."""
    m = _REF.match(ref)
    if not m:
        raise ModelRefError(
            f"bad registry reference {ref!r}: use models:/<name>@<alias> or models:/<name>/<n>"
        )
    return m["name"], m["alias"], m["version"]


def get_version(ws: Workspace, ref: str) -> VersionInfo:
    """Resolve a registry reference to one version, with its tags and aliases."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_ref(ref)
    c = client(ws)
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(
            name, version
        )
    except MlflowException as e:
        raise ModelRefError(f"{ref}: not in the registry at {_mlflow(ws).get_tracking_uri()} "
                            f"({e.error_code})") from None
    return VersionInfo(name, str(mv.version), dict(mv.tags), list(mv.aliases), mv.run_id)


def materialize(ref: str, workspace_root: Path | None = None) -> Path:
    """A local model folder for a registry reference, downloaded once per version."""
    import mlflow

    ws = Workspace(workspace_root) if workspace_root else Workspace(home_from_env())
    info = get_version(ws, ref)
    final = ws.model_cache / info.name / info.version
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{info.version}-{uuid.uuid4().hex[:8]}"
        _mlflow(ws)
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{info.name}/{info.version}", dst_path=str(tmp)
        )
        try:
            tmp.rename(final)
        except OSError:  # another process got there first: its copy is the same version
            shutil.rmtree(tmp, ignore_errors=True)
    model_dir = _encoder_dir(final)
    if model_dir is None:
        raise ModelRefError(f"{ref} (version {info.version}) holds no encoder folder")
    return model_dir


def _encoder_dir(model_root: Path) -> Path | None:
    """The encoder folder inside a downloaded pyfunc model, as its MLmodel file names it."""
    import yaml

    mlmodel = model_root / "MLmodel"
    if not mlmodel.is_file():
        return None
    meta = yaml.safe_load(mlmodel.read_text())
    artifacts = meta.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    rel = artifacts.get(ENCODER_ARTIFACT, {}).get("path")
    if not rel or not (model_root / rel / "config.json").is_file():
        return None
    return model_root / rel


def register_model(
    cfg: CtxvecConfig,
    ws: Workspace,
    snapshot: Snapshot | None,
    tokenizer_art: TokenizerArtifact | None,
    trained: TrainedModel,
    report: EvalReport,
) -> RegisteredModel:
    """Log a run (params, metrics, artifacts), the pyfunc model, and register a new version.

    ``snapshot`` is None for models fine-tuned on files rather than the corpus; the tokenizer
    hash then comes from the model's own tokenizer.json."""
    from ctxvec.workspace import sha256_file

    snapshot_id = snapshot.snapshot_id if snapshot else ""
    tok_hash = (tokenizer_art.sha256 if tokenizer_art
                else sha256_file(Path(trained.model_dir) / "tokenizer.json"))
    mlflow = _mlflow(ws)
    from mlflow.entities import Metric, Param

    run_dir = Path(trained.run_dir)
    exp_id = _experiment_id(ws, cfg.registry.experiment)
    parent_version = ""
    if trained.parent and trained.parent.startswith("models:/"):
        parent_version = get_version(ws, trained.parent).version
    with mlflow.start_run(experiment_id=exp_id, run_name=cfg.name) as run:
        c = mlflow.MlflowClient()
        params = [Param(k, str(v)[:500]) for k, v in flatten(cfg).items()]
        metrics = []
        metrics_file = run_dir / "metrics.jsonl"
        for line in metrics_file.read_text().splitlines() if metrics_file.is_file() else []:
            row = json.loads(line)
            step = int(row.pop("step"))
            metrics += [Metric(k if k.startswith("eval/") else f"train/{k}", float(v), 0, step)
                        for k, v in row.items() if v is not None]
        metrics += [Metric(f"eval/{k}", float(v), 0, 0) for k, v in report.metrics.items()]
        # Batched writes: MLflow takes at most 100 params and 1000 metrics per call.
        for i in range(0, len(params), 100):
            c.log_batch(run.info.run_id, params=params[i : i + 100])
        for i in range(0, len(metrics), 1000):
            c.log_batch(run.info.run_id, metrics=metrics[i : i + 1000])
        mlflow.set_tags({
            "ctxvec.version": __version__,
            "data_snapshot": snapshot_id,
            "tokenizer_hash": tok_hash,
            **{f"eval_skipped.{k}": v for k, v in report.skipped.items()},
        })
        mlflow.log_text(config_to_yaml(cfg), "config.yaml")
        for name in ("manifest.json", "evaluation.json", "metrics.jsonl"):
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name), artifact_path="run")
        if snapshot is not None:
            mlflow.log_artifact(str(Path(snapshot.path) / "manifest.json"),
                                artifact_path="snapshot")
        info = mlflow.pyfunc.log_model(
            name="encoder",
            python_model=str(PYFUNC_CODE),
            artifacts={ENCODER_ARTIFACT: trained.model_dir},
            input_example=["I saw a saw."],
            pip_requirements=_requirements(),
            registered_model_name=cfg.registry.model_name,
        )
    version = str(info.registered_model_version)
    with open(Path(trained.model_dir) / "config.json") as f:
        dim = json.load(f)["hidden_size"]
    tags = {
        "data_snapshot": snapshot_id,
        "parent_version": parent_version,
        "parent_ref": trained.parent or "",
        "tokenizer_hash": tok_hash,
        "dim": str(dim),
        **{f"eval.{k}": f"{v:.6g}" for k, v in report.metrics.items()},
    }
    for k, v in tags.items():
        c.set_model_version_tag(cfg.registry.model_name, version, k, v)
    c.set_registered_model_alias(cfg.registry.model_name, "challenger", version)
    log.info("register: %s version %s (run %s)", cfg.registry.model_name, version,
             run.info.run_id)
    return RegisteredModel(
        cfg.registry.model_name, version, run.info.run_id,
        f"models:/{cfg.registry.model_name}/{version}",
    )


def _requirements() -> list[str]:
    from importlib.metadata import version as v

    pkgs = ["torch", "transformers", "tokenizers", "safetensors", "numpy", "mlflow"]
    return [f"ctxvec=={__version__}"] + [f"{p}=={v(p)}" for p in pkgs]


def attach_index(ws: Workspace, name: str, version: str, index: IndexArtifact) -> None:
    """Link a version to its embeddings and index (tags), so a server can find its pair."""
    c = client(ws)
    # a store URI for a remote workspace: another machine, with an empty cache, can fetch it
    c.set_model_version_tag(name, version, "index_uri", ws.uri_for(index.path))
    c.set_model_version_tag(name, version, "index.recall_at_10", f"{index.recall_at_10:.4f}")
    c.set_model_version_tag(name, version, "index.count", str(index.count))


def promote(ws: Workspace, name: str, version: str, alias: str = "champion") -> str | None:
    """Point ``alias`` at ``version``; returns the version it pointed at before, if any."""
    from mlflow.exceptions import MlflowException

    c = client(ws)
    previous = None
    try:
        previous = str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        pass
    if not get_version(ws, f"models:/{name}/{version}").tags.get("index_uri"):
        raise ValueError(f"{name} version {version} has no index yet: build it before promoting")
    c.set_registered_model_alias(name, alias, version)
    if previous and previous != version:
        c.set_model_version_tag(name, version, "previous_champion", previous)
    if alias == "champion" and previous != version:
        history = _champion_history(c, name) or ([previous] if previous else [])
        _set_champion_history(c, name, [*history, version])
    log.info("promote: %s@%s -> version %s (was %s)", name, alias, version, previous)
    return previous


HISTORY_TAG = "champion_history"  # registered-model tag: the champions in order, comma-separated


def _champion_history(c, name: str) -> list[str]:
    raw = c.get_registered_model(name).tags.get(HISTORY_TAG, "")
    return [v for v in raw.split(",") if v]


def _set_champion_history(c, name: str, history: list[str]) -> None:
    c.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[-100:]))


def rollback(ws: Workspace, name: str) -> tuple[str, str]:
    """Point ``champion`` back at the version that was champion before the current one, if its
    index is still on disk (or on the store); -> (version rolled back from, version now serving)."""
    from mlflow.exceptions import MlflowException

    c = client(ws)
    try:
        current = str(c.get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        raise ModelRefError(f"{name} has no champion to roll back") from None
    history = _champion_history(c, name)
    if history and history[-1] != current:  # the alias was moved by hand: start from it
        history.append(current)
    if len(history) < 2:
        raise ModelRefError(f"{name}@champion (version {current}) has no earlier champion to "
                            "roll back to")
    target = history[-2]
    index_uri = c.get_model_version(name, target).tags.get("index_uri")
    if not index_uri or ws.stage_manifest(index_uri) is None:
        raise ModelRefError(f"cannot roll back to version {target}: its index "
                            f"({index_uri or 'none'}) is gone; rebuild it with "
                            f"`ctxvec embed --model models:/{name}/{target} --index`")
    c.set_registered_model_alias(name, "champion", target)
    c.set_model_version_tag(name, current, "rolled_back_to", target)
    _set_champion_history(c, name, history[:-1])
    log.info("rollback: %s@champion -> version %s (was %s)", name, target, current)
    return current, target


def set_drift(ws: Workspace, name: str, version: str, report: dict) -> None:
    """Keep a drift report with the version (tag ``drift``) and log its numbers to its run."""
    c = client(ws)
    c.set_model_version_tag(name, version, "drift", json.dumps(report))
    run_id = c.get_model_version(name, version).run_id
    if run_id:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        numbers = {f"drift/{k}": v for k, v in report.items() if isinstance(v, float)}
        numbers |= {f"drift/delta/{k}": v for k, v in report["eval_deltas"].items()}
        c.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in numbers.items()])


def set_version_tags(ws: Workspace, name: str, version: str, tags: dict[str, str]) -> None:
    c = client(ws)
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))


def alias_version(ws: Workspace, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None (no such alias or model)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(ws).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def version_with_tag(ws: Workspace, name: str, tag: str, value: str) -> VersionInfo | None:
    """The newest version whose tag ``tag`` equals ``value`` (e.g. the continual update that a
    re-run must pick up instead of registering it twice)."""
    try:
        versions = list_versions(ws, name)
    except ModelRefError:
        return None
    return next((v for v in versions if v.tags.get(tag) == value), None)


def version_details(ws: Workspace, name: str, version: str) -> dict:
    """One version as ``ctxvec models show`` prints it: tags, aliases, its run's metrics and
    parameters, and its index manifest."""
    info = get_version(ws, f"models:/{name}/{version}")
    c = client(ws)
    run = c.get_run(info.run_id) if info.run_id else None
    index_uri = info.tags.get("index_uri")
    index = None
    m = ws.stage_manifest(index_uri) if index_uri else None
    if m is not None:
        index = {k: m.get(k) for k in ("factory", "count", "dim", "recall_at_10", "bm25",
                                       "senses", "build_seconds", "created_at")}
    drift = info.tags.get("drift")
    return {
        "name": name, "version": info.version, "aliases": info.aliases, "tags": info.tags,
        "run_id": info.run_id,
        "metrics": dict(run.data.metrics) if run else {},
        "params": dict(run.data.params) if run else {},
        "index": index, "index_uri": index_uri,
        "drift": json.loads(drift) if drift else None,
    }


def list_versions(ws: Workspace, name: str) -> list[VersionInfo]:
    """Every version of a registered model, newest first, with its tags and aliases."""
    from mlflow.exceptions import MlflowException

    c = client(ws)
    try:
        by_alias = c.get_registered_model(name).aliases  # the search below leaves aliases empty
    except MlflowException as e:
        raise ModelRefError(f"no registered model {name!r} ({e.error_code})") from None
    aliases: dict[str, list[str]] = {}
    for alias, version in by_alias.items():
        aliases.setdefault(str(version), []).append(alias)
    versions = c.search_model_versions(f"name='{name}'")
    return sorted(
        (VersionInfo(name, str(mv.version), dict(mv.tags), sorted(aliases.get(str(mv.version), [])),
                     mv.run_id) for mv in versions),
        key=lambda v: -int(v.version),
    )
