"""Prefect caching for the pipeline's stages: a stage whose inputs did not change is not run again.

A stage's cache key hashes what its output depends on:
- the stage's name and the ctxvec version;
- the recipe's name and the config sections the stage reads (``train`` and ``model`` for train);
- its upstream artifacts (the frozen records of ``ctxvec.artifacts``: ids, paths, hashes), less
  the counters of the ingest run that produced a snapshot (an ingest that found nothing new
  names the same corpus as the one before it);
- a fingerprint (relative path, size, mtime of every file) of the folders those artifacts point
  at, and of the data files the config names (evaluation sets, training data files), so an
  input rewritten in place is an input changed;
- for train, the model it starts from, an alias (``models:/x@champion``) resolved to the
  version it names now; for register, the MLflow tracking and registry URIs;
- the workspace root.

The cached value (the stage's artifact) is persisted under ``<home>/prefect-results`` and is
used only while the files it points at exist (for ``register``: while the registry still holds
the version, made by the same MLflow run). A cached value that fails that check is superseded:
the key moves to a successor key (a hash of the old one), the stage runs again, and its new
result is stored there; the next run follows the same chain to it.

Not cached here: ingest (new files may land in the sources at any time; ingest is incremental by
itself), training with ``train.resume=false`` (a fresh run was asked for), a tokenizer taken from
a model, promotion and the sample query. ``PREFECT_TASKS_REFRESH_CACHE=true`` runs every stage
again and overwrites what is cached.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.utilities.hashing import hash_objects

from ctxvec import __version__
from ctxvec.artifacts import RegisteredModel, Snapshot
from ctxvec.config import CtxvecConfig
from ctxvec.errors import UserInputError
from ctxvec.workspace import Workspace

RESULTS_DIR = "prefect-results"  # under the workspace root
# What an ingest run counted, not what its corpus holds: two runs that name the same corpus
# differ here (the second read nothing new), and their downstream stages must not.
_INGEST_COUNTERS = {"created", "read", "kept", "duplicates", "near_duplicates", "filtered",
                    "quarantined", "skipped_files", "deferred"}
_PATH_FIELDS = ("path", "model_dir", "corpus")  # artifact fields that name files or folders
_MAX_SUPERSEDED = 100


def results_dir(ws: Workspace) -> Path:
    return ws.root / RESULTS_DIR


def fingerprint(paths: Iterable[str | Path]) -> list:
    """(path, [(relative path, size, mtime_ns) of each file]) per path, or 'missing'."""
    out: list = []
    for p in map(Path, paths):
        if p.is_file():
            st = p.stat()
            out.append((str(p), st.st_size, st.st_mtime_ns))
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            out.append((str(p), [(str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
                                 for f in files]))
        else:
            out.append((str(p), "missing"))
    return out


def artifact_paths(value: Any) -> list[str]:
    """The files and folders an artifact points at."""
    if not hasattr(value, "to_dict"):
        return []
    d = value.to_dict()
    paths: list[str] = []
    for name in _PATH_FIELDS:
        v = d.get(name)
        paths += [v] if isinstance(v, str) else list(v or [])
    return paths


def identity(value: Any) -> Any:
    """What of an input goes into a key: an artifact's fields (a snapshot's without the ingest
    counters), a plain value as it is; config and workspace are keyed elsewhere."""
    if isinstance(value, CtxvecConfig | Workspace):
        return None
    if isinstance(value, Snapshot):
        return {k: v for k, v in value.to_dict().items() if k not in _INGEST_COUNTERS}
    if hasattr(value, "to_dict"):
        return {"type": type(value).__name__, **value.to_dict()}
    return value


def mlflow_uris(ws: Workspace) -> list[str]:
    """The MLflow tracking and registry URIs the registry stage writes to (as
    ``ctxvec.registry`` picks them)."""
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or ws.mlflow_uri
    return [tracking, os.environ.get("MLFLOW_REGISTRY_URI") or tracking]


def outputs_exist(result: Any, inputs: dict[str, Any]) -> bool:
    return all(Path(p).exists() for p in artifact_paths(result))


def version_registered(result: Any, inputs: dict[str, Any]) -> bool:
    """The cached version is still in the registry, made by the same MLflow run."""
    from ctxvec.registry.store import get_version

    if not isinstance(result, RegisteredModel):
        return False
    try:
        return get_version(inputs["ws"], result.uri).run_id == result.run_id
    except UserInputError:  # ModelRefError: not in this registry (any more)
        return False


@dataclass
class StageCache(CachePolicy):
    """Cache key of one pipeline stage (see the module docstring).

    ``sections``: the config sections (dotted paths allowed) the stage reads. ``data_paths``:
    files the config names that the stage reads (fingerprinted). ``extra``: anything else the
    output depends on (the resolved parent model, the tracking URI). ``skip``: a reason not to
    cache this call, or None. ``valid``: whether a cached result is still usable.
    """

    stage: str = ""
    sections: tuple[str, ...] = ()
    extra: Callable[[CtxvecConfig, Workspace], Any] | None = None
    skip: Callable[[CtxvecConfig], str | None] | None = None
    valid: Callable[[Any, dict[str, Any]], bool] = outputs_exist
    data_paths: Callable[[CtxvecConfig], list[str]] | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        cfg: CtxvecConfig = inputs["cfg"]
        ws: Workspace = inputs["ws"]
        reason = self.skip(cfg) if self.skip else None
        if reason:
            get_run_logger().info("%s: not cached: %s", self.stage, reason)
            return None
        try:
            extra = self.extra(cfg, ws) if self.extra else None
        except UserInputError as e:  # e.g. an alias naming no version: the stage will say so
            get_run_logger().info("%s: not cached: %s", self.stage, e)
            return None
        upstream = {k: v for k, v in inputs.items() if k not in ("cfg", "ws")}
        key = hash_objects(
            self.stage, __version__, str(ws.root), cfg.name,
            {s: _section(cfg, s) for s in self.sections},
            {k: identity(v) for k, v in sorted(upstream.items())},
            fingerprint([p for v in upstream.values() for p in artifact_paths(v)]),
            fingerprint(self.data_paths(cfg) if self.data_paths else []),
            extra,
            raise_on_failure=True,
        )
        return self._first_usable(task_ctx, key, inputs)

    def _first_usable(self, task_ctx: TaskRunContext, key: str, inputs: dict[str, Any]) -> str:
        """``key``, or its first successor whose cached value is usable or absent."""
        store = task_ctx.result_store
        for _ in range(_MAX_SUPERSEDED):
            if not store.exists(key):
                return key
            try:
                usable = self.valid(store.read(key).result, inputs)
            except Exception as e:  # unreadable (another ctxvec version's pickle): not usable
                get_run_logger().debug("%s: cached result %s unreadable: %s", self.stage, key, e)
                usable = False
            if usable:
                return key
            get_run_logger().info("%s: the cached result points at files or a model version "
                                  "that are gone; running the stage again", self.stage)
            key = hash_objects(key, "superseded", raise_on_failure=True)
        return key


def _section(cfg: CtxvecConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node.model_dump(mode="json") if hasattr(node, "model_dump") else node


# --- what each stage depends on beyond its config sections and artifacts ----------------------


def parent_model(cfg: CtxvecConfig, ws: Workspace) -> Any:
    """The model training starts from, pinned: an alias (``models:/x@champion``) moves, so it is
    resolved to its version; a local folder is fingerprinted."""
    ref = cfg.model.init
    if ref.startswith("models:/"):
        from ctxvec.registry.store import get_version

        v = get_version(ws, ref)
        return {"ref": f"models:/{v.name}/{v.version}", "run_id": v.run_id,
                "mlflow": mlflow_uris(ws)}
    if ref in ("scratch", "minilm"):
        return ref
    return {"ref": ref, "files": fingerprint([ref])}


def train_data(cfg: CtxvecConfig) -> list[str]:
    """Data files training reads besides the packed corpus: objectives' files, and the STS set
    when training evaluates on it (eval_every or early stopping)."""
    paths = [o.data.path for o in cfg.train.objectives if o.data.path]
    if cfg.evaluate.sts and (cfg.train.eval_every or cfg.train.early_stopping):
        paths.append(cfg.evaluate.sts)
    return paths


def eval_data(cfg: CtxvecConfig) -> list[str]:
    e = cfg.evaluate
    return [p for p in (e.sts, e.retrieval, e.wic) if p]


def no_fresh_training(cfg: CtxvecConfig) -> str | None:
    return None if cfg.train.resume else "train.resume=false asks for a fresh run"


def no_model_tokenizer(cfg: CtxvecConfig) -> str | None:
    return "the tokenizer comes from the model" if cfg.tokenizer.source == "model" else None


TOKENIZER = StageCache(stage="tokenizer", sections=("tokenizer", "model.max_position"),
                       skip=no_model_tokenizer)
PACK = StageCache(stage="pack", sections=("pack", "train.seq_len"))
TRAIN = StageCache(stage="train", sections=("model", "train"), extra=parent_model,
                   skip=no_fresh_training, data_paths=train_data)
EVALUATE = StageCache(stage="evaluate", sections=("evaluate",), data_paths=eval_data)
# A new model (other weights, or another run) has another key, so it is always registered; the
# same model is registered once per registry (MLflow URIs) while that version exists.
REGISTER = StageCache(stage="register", sections=("registry",),
                      extra=lambda cfg, ws: mlflow_uris(ws), valid=version_registered)
EMBED = StageCache(stage="embed", sections=("embed",))
INDEX = StageCache(stage="index", sections=("index",))
