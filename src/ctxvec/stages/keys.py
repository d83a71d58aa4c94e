"""What a stage's idempotence key is made of, and whether a record made under a key is still
usable.

A keyed stage's key is a hash of what its output depends on:
- the stage's name and the ctxvec version;
- the recipe's name and the config sections the stage reads (``train`` and ``model`` for train);
- its upstream records (the frozen records of ``ctxvec.artifacts``: ids, paths, hashes), less
  the counters of the ingest run that produced a snapshot (an ingest that found nothing new
  names the same corpus as the one before it);
- a fingerprint (relative path, size, mtime of every file) of the folders those records point
  at, and of the data files the config names (evaluation sets, training data files), so an
  input rewritten in place is an input changed;
- anything else the stage declares: for train, the model it starts from, an alias
  (``models:/x@champion``) resolved to the version it names now; for register, the MLflow
  tracking and registry URIs;
- the workspace root.

A record made under a key is reusable while the files it points at exist (for ``register``:
while the registry still holds the version, made by the same MLflow run).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ctxvec.artifacts import RegisteredModel, Snapshot
from ctxvec.config import CtxvecConfig
from ctxvec.errors import UserInputError
from ctxvec.stages import versions
from ctxvec.workspace import Workspace

# What an ingest run counted, not what its corpus holds: two runs that name the same corpus
# differ here (the second read nothing new), and their downstream stages must not.
INGEST_COUNTERS = frozenset({"created", "read", "kept", "duplicates", "near_duplicates",
                             "filtered", "quarantined", "skipped_files", "deferred"})
_PATH_FIELDS = ("path", "model_dir", "corpus")  # record fields that name files or folders


def digest(*parts: Any) -> str:
    """A stable hash of JSON-able parts (anything else by its ``str``)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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


def record_paths(value: Any) -> list[str]:
    """The files and folders a record points at."""
    if not hasattr(value, "to_dict"):
        return []
    d = value.to_dict()
    paths: list[str] = []
    for name in _PATH_FIELDS:
        v = d.get(name)
        paths += [v] if isinstance(v, str) else list(v or [])
    return paths


def identity(value: Any) -> Any:
    """What of a record goes into a key: its fields (a snapshot's without the ingest counters);
    a plain value as it is."""
    if isinstance(value, Snapshot):
        return {k: v for k, v in value.to_dict().items() if k not in INGEST_COUNTERS}
    if hasattr(value, "to_dict"):
        return {"type": type(value).__name__, **value.to_dict()}
    return value


def section(cfg: CtxvecConfig, dotted: str) -> Any:
    """A config section (``train``) or key (``model.max_position``) as JSON."""
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node.model_dump(mode="json") if hasattr(node, "model_dump") else node


def mlflow_uris(cfg: CtxvecConfig, ws: Workspace) -> list[str]:
    """The MLflow tracking and registry URIs the register stage writes to (as
    ``ctxvec.registry`` picks them)."""
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or ws.mlflow_uri
    return [tracking, os.environ.get("MLFLOW_REGISTRY_URI") or tracking]


def parent_model(cfg: CtxvecConfig, ws: Workspace) -> Any:
    """The model training starts from, pinned: an alias (``models:/x@champion``) moves, so it is
    resolved to its version; a local folder is fingerprinted."""
    ref = cfg.model.init
    if versions.is_registry_ref(ref):
        v = versions.version_info(ws, ref)
        return {"ref": str(v.ref), "run_id": v.run_id,
                "mlflow": mlflow_uris(cfg, ws)}
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


# --- whether a record made under a key is still usable ---------------------------------------


def outputs_exist(record: Any, ws: Workspace) -> bool:
    """Every file or folder the record names exists (a record without paths, such as an
    evaluation report, names none)."""
    return hasattr(record, "to_dict") and all(Path(p).exists() for p in record_paths(record))


def inside_workspace(record: Any, ws: Workspace) -> bool:
    """Every path the record names is inside the workspace (its folder, or its store URI)."""
    root = str(ws.root)
    for p in record_paths(record):
        if ws.uri and (p == ws.uri or p.startswith(ws.uri + "/")):
            continue
        path = os.path.abspath(p)
        if path != root and not path.startswith(root + os.sep):
            return False
    return True


def version_registered(record: Any, ws: Workspace) -> bool:
    """The version is still in the registry, made by the same MLflow run."""
    if not isinstance(record, RegisteredModel):
        return False
    try:
        return versions.version_info(ws, record.uri).run_id == record.run_id
    except UserInputError:  # ModelRefError: not in this registry (any more)
        return False
