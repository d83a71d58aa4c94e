"""A registered version's files in the workspace cache: downloaded once, then read from disk.

Versions are immutable, so ``<model_cache>/<name>/<version>`` never goes stale and a pinned
version whose folder is there needs no registry call at all. The folder holds the pyfunc model as
MLflow logged it (``MLmodel``, ``python_model``, ``artifacts/encoder/...``) plus the
``registered_model_meta`` file MLflow writes when it downloads a registered model.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import yaml

from ctxvec.refs import ModelRefError
from ctxvec.registry.uris import MlflowUris

ENCODER_ARTIFACT = "encoder"


def cached_version_dir(model_cache: Path, name: str, version: str) -> Path:
    return model_cache / name / version


def version_source(client, name: str, version: str) -> str:
    """The artifact URI of a version's pyfunc model in MLflow's store (where it is downloaded
    from; a ``file://`` or plain path for the embedded store)."""
    source = client.get_model_version_download_uri(name, version)
    if source.startswith("models:/"):  # MLflow 3: a logged model, stored under its own id
        source = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    return source


def download_version(client, uris: MlflowUris, model_cache: Path, name: str,
                     version: str) -> Path:
    """The cache folder of ``name`` version ``version``, downloaded if it is not there yet."""
    final = cached_version_dir(model_cache, name, version)
    if final.is_dir():
        return final
    # lazy: mlflow takes seconds to import; only the registry's own modules import it
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.utils.yaml_utils import write_yaml

    source = version_source(client, name, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    # the client's own URIs, passed down: no process-wide MLflow URI is read or set
    repo = get_artifact_repository(source, tracking_uri=uris.tracking,
                                   registry_uri=uris.registry)
    repo.download_artifacts("", dst_path=str(tmp))
    write_yaml(str(tmp), "registered_model_meta", {"model_name": name, "model_version": version},
               overwrite=True, ensure_yaml_extension=False)
    try:
        tmp.rename(final)
    except OSError:  # another process got there first: its copy is the same version
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def encoder_dir(model_root: Path, what: str) -> Path:
    """The encoder folder inside a downloaded pyfunc model, as its MLmodel file names it."""
    mlmodel = model_root / "MLmodel"
    rel = None
    if mlmodel.is_file():
        meta = yaml.safe_load(mlmodel.read_text()) or {}
        artifacts = meta.get("flavors", {}).get("python_function", {}).get("artifacts", {})
        rel = artifacts.get(ENCODER_ARTIFACT, {}).get("path")
    if not rel or not (model_root / rel / "config.json").is_file():
        raise ModelRefError(f"{what} holds no encoder folder")
    return model_root / rel
