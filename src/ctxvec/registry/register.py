"""Registering a trained encoder: one MLflow run (params, metrics, artifacts), the pyfunc model,
and a new version of ``registry.model_name`` tagged with its lineage and evaluation."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from importlib.metadata import version as package_version
from pathlib import Path

from ctxvec import __version__
from ctxvec.artifacts import (
    EvalReport,
    RegisteredModel,
    Snapshot,
    TokenizerArtifact,
    TrainedModel,
)
from ctxvec.config import CtxvecConfig, config_to_yaml, flatten
from ctxvec.embed.precision import PRECISION_TAG, PYFUNC_PRECISION, embed_precision
from ctxvec.faults import crash_point
from ctxvec.refs import ModelRef
from ctxvec.registry.access import RegistryAccess
from ctxvec.registry.download import ENCODER_ARTIFACT
from ctxvec.registry.uris import fluent_uris
from ctxvec.registry.wheel import build_wheel
from ctxvec.workspace import sha256_file, sha256_text

log = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# ctxvec's wheel, logged with the model: MLflow copies a pyfunc's artifacts into artifacts/
WHEEL_ARTIFACT, WHEEL_ARTIFACT_DIR = "ctxvec_wheel", "artifacts"
# run tags naming the register a run belongs to and the process that runs it
KEY_TAG, PID_TAG, HOST_TAG = "ctxvec.register_key", "ctxvec.pid", "ctxvec.host"


def experiment_id(reg: RegistryAccess, name: str) -> str:
    exp = reg.client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not reg.uris.from_env:
        ws = reg.ws
        if not ws.uri:
            ws.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        # not ./mlruns of whatever cwd we run in; on the store for a remote workspace
        location = ws.mlflow_artifact_location
    return reg.client.create_experiment(name, artifact_location=location)


def _metrics(run_dir: Path, report: EvalReport) -> list:
    from mlflow.entities import Metric  # lazy: mlflow takes seconds to import

    metrics = []
    metrics_file = run_dir / "metrics.jsonl"
    for line in metrics_file.read_text().splitlines() if metrics_file.is_file() else []:
        row = json.loads(line)
        step = int(row.pop("step"))
        metrics += [Metric(k if k.startswith("eval/") else f"train/{k}", float(v), 0, step)
                    for k, v in row.items() if v is not None]
    return metrics + [Metric(f"eval/{k}", float(v), 0, 0) for k, v in report.metrics.items()]


def register_model(
    reg: RegistryAccess,
    cfg: CtxvecConfig,
    snapshot: Snapshot | None,
    tokenizer_art: TokenizerArtifact | None,
    trained: TrainedModel,
    report: EvalReport,
    reuse: bool = False,
) -> RegisteredModel:
    """Log a run (params, metrics, artifacts), the pyfunc model, and register a new version.

    ``reuse``: a finished register of the same trained model (same folder, same steps) is
    returned instead of a new version (the pipeline's register stage, re-run after a kill that
    came between the register and the stage's record).

    ``snapshot`` is None for models fine-tuned on files rather than the corpus; the tokenizer
    hash then comes from the model's own tokenizer.json.

    The run ends (FINISHED) only after the version has its tags and the ``challenger`` alias, so
    a run still RUNNING whose process is gone is a register that was killed. Such a run of the
    same trained model that got as far as its version is finished instead of registering the
    model twice; any other is marked FAILED (and its version, if it has one, tagged
    ``ctxvec.incomplete``)."""
    # lazy: mlflow takes seconds to import
    import mlflow

    snapshot_id = snapshot.snapshot_id if snapshot else ""
    tok_hash = (tokenizer_art.sha256 if tokenizer_art
                else sha256_file(Path(trained.model_dir) / "tokenizer.json"))
    exp_id = experiment_id(reg, cfg.registry.experiment)
    parent_version = ""
    if trained.parent and ModelRef.parse(trained.parent).is_registry:
        parent_version = reg.resolve(trained.parent).version
    with open(Path(trained.model_dir) / "config.json") as f:
        dim = json.load(f)["hidden_size"]
    # the precision this version's corpus will be embedded in, and so its queries and pyfunc
    precision = embed_precision(cfg)
    tags = {
        "data_snapshot": snapshot_id,
        "parent_version": parent_version,
        "parent_ref": trained.parent or "",
        "tokenizer_hash": tok_hash,
        "dim": str(dim),
        PRECISION_TAG: precision,
        **{f"eval.{k}": f"{v:.6g}" for k, v in report.metrics.items()},
    }
    key = register_key(cfg, trained)
    name = cfg.registry.model_name
    resumed = _settle_killed_runs(reg, exp_id, name, key)
    if resumed is not None:  # the same model's register was killed after its version existed
        version, run_id = resumed
        _finish_version(reg, name, version, tags, found_again=True)
        reg.client.set_terminated(run_id, "FINISHED")
        log.info("register: %s version %s finished (run %s, whose register was killed)",
                 name, version, run_id)
        return RegisteredModel(name, version, run_id,
                               str(ModelRef.registered(name, version=version)))
    done = _registered_before(reg, exp_id, name, key) if reuse else None
    if done is not None:  # registered in full, but whoever asked died before recording it
        version, run_id = done
        _finish_version(reg, name, version, tags, found_again=True)
        log.info("register: %s version %s already holds this trained model (run %s); "
                 "not registering it twice", name, version, run_id)
        return RegisteredModel(name, version, run_id,
                               str(ModelRef.registered(name, version=version)))
    # The run and the pyfunc model go through MLflow's fluent API (log_model has no client
    # form), so the process-wide URIs point at this workspace for this block only.
    with fluent_uris(reg.uris), mlflow.start_run(experiment_id=exp_id, run_name=cfg.name,
                                                 tags=_owner_tags(key)) as run:
        run_id = run.info.run_id
        _log_run(reg, run_id, cfg, snapshot, trained, report, snapshot_id, tok_hash)
        crash_point("register-before-log-model")
        with tempfile.TemporaryDirectory(prefix="ctxvec-wheel-") as tmp:
            wheel = build_wheel(Path(tmp))
            info = mlflow.pyfunc.log_model(
                name="encoder",
                python_model=str(PYFUNC_CODE),
                artifacts={ENCODER_ARTIFACT: trained.model_dir, WHEEL_ARTIFACT: str(wheel)},
                model_config={PYFUNC_PRECISION: precision, "precision": "auto"},
                signature=_signature(dim),
                input_example=["I saw a saw."],
                pip_requirements=requirements(wheel.name),
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        crash_point("register-after-log-model")
        _finish_version(reg, name, version, tags)
    log.info("register: %s version %s (run %s)", name, version, run_id)
    return RegisteredModel(name, version, run_id, str(ModelRef.registered(name, version=version)))


def _log_run(reg: RegistryAccess, run_id: str, cfg: CtxvecConfig, snapshot: Snapshot | None,
             trained: TrainedModel, report: EvalReport, snapshot_id: str, tok_hash: str) -> None:
    """The run's params, metrics, tags and artifacts (inside its ``start_run`` block)."""
    # lazy: mlflow takes seconds to import
    import mlflow
    from mlflow.entities import Param

    c = reg.client
    run_dir = Path(trained.run_dir)
    params = [Param(k, str(v)[:500]) for k, v in flatten(cfg).items()]
    trained_in = _trained_precision(run_dir)
    if trained_in:  # what train.precision (auto) resolved to where it trained
        params.append(Param("train.precision_resolved", trained_in))
    metrics = _metrics(run_dir, report)
    # Batched writes: MLflow takes at most 100 params and 1000 metrics per call.
    for i in range(0, len(params), 100):
        c.log_batch(run_id, params=params[i : i + 100])
    for i in range(0, len(metrics), 1000):
        c.log_batch(run_id, metrics=metrics[i : i + 1000])
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


def _trained_precision(run_dir: Path) -> str | None:
    """The precision the run trained in (its manifest's ``precision``), if it says."""
    try:
        return json.loads((run_dir / "manifest.json").read_text()).get("precision")
    except (OSError, ValueError):
        return None


def _finish_version(reg: RegistryAccess, name: str, version: str, tags: dict[str, str],
                    found_again: bool = False) -> None:
    """Tag a version and make it the ``challenger``. A version ``found_again`` (a register that
    was killed, or reused) keeps the precision it recorded: its pyfunc was logged with it."""
    if found_again and PRECISION_TAG in reg.client.get_model_version(name, version).tags:
        tags = {k: v for k, v in tags.items() if k != PRECISION_TAG}
    for k, v in tags.items():
        reg.client.set_model_version_tag(name, version, k, v)
    reg.client.set_registered_model_alias(name, "challenger", version)


# --- registers that were killed ------------------------------------------------------------


def register_key(cfg: CtxvecConfig, trained: TrainedModel) -> str:
    """What makes two registers the same: the registered name and the trained model's folder
    (a run folder is named by the hash of what trained it) and step count."""
    model_dir = Path(trained.model_dir).resolve()
    return sha256_text(f"{cfg.registry.model_name}\n{model_dir}\n{trained.steps}")[:16]


def _owner_tags(key: str) -> dict[str, str]:
    return {KEY_TAG: key, PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def _owner_gone(tags: dict[str, str]) -> bool:
    """The process that started a register run has died (it ran on this machine, and no
    process has its id but this one, which is not registering yet)."""
    if tags.get(HOST_TAG) != socket.gethostname():
        return False  # another machine's: it may still be running
    pid = int(tags.get(PID_TAG) or 0)
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: alive
        return False
    return False


def _settle_killed_runs(reg: RegistryAccess, exp_id: str, name: str,
                        key: str) -> tuple[str, str] | None:
    """Close the register runs of this experiment whose process was killed: -> (version,
    run id) of one of the same model (``key``) that had registered its version, to be finished
    by the caller; every other killed run is marked FAILED."""
    c = reg.client
    resumed = None
    for run in c.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'",
                             max_results=1000):
        tags = run.data.tags
        if KEY_TAG not in tags or not _owner_gone(tags):
            continue
        run_id = run.info.run_id
        versions = [v for v in c.search_model_versions(f"run_id = '{run_id}'")
                    if v.name == name]
        if resumed is None and tags[KEY_TAG] == key and versions:
            resumed = (str(versions[0].version), run_id)
            continue
        for v in versions:
            c.set_model_version_tag(v.name, v.version, "ctxvec.incomplete",
                                    f"its register (run {run_id}) was killed")
        c.set_terminated(run_id, "FAILED")
        log.warning("register: run %s was killed before it finished; marked FAILED", run_id)
    return resumed


def _registered_before(reg: RegistryAccess, exp_id: str, name: str,
                       key: str) -> tuple[str, str] | None:
    """-> (version, run id) of a finished register of the same trained model (``key``) whose
    version still exists and is complete, or None. A ``ctxvec run`` killed after its register
    stage but before that stage's record was kept registers again on the re-run: this makes
    the re-run find the version instead of adding a second copy of the same weights."""
    c = reg.client
    runs = c.search_runs([exp_id], filter_string=(
        f"attributes.status = 'FINISHED' and tags.`{KEY_TAG}` = '{key}'"),
        order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        for v in c.search_model_versions(f"run_id = '{run.info.run_id}'"):
            if v.name == name and "ctxvec.incomplete" not in (v.tags or {}):
                return str(v.version), run.info.run_id
    return None


# --- what the logged model needs -----------------------------------------------------------

# the pins of the registering environment; ctxvec's own wheel brings the rest of its dependencies
PINNED = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "mlflow")


def requirements(wheel_name: str) -> list[str]:
    """The model's ``requirements.txt``: ctxvec's wheel by its path inside the model folder
    (where MLflow's virtualenv and uv environment managers run ``pip install -r``) and the
    installed versions of what the pyfunc imports, pinned without their local label: the
    ``+cpu`` of ``torch==2.13.0+cpu`` is a build of the PyTorch index, and pip accepts a plain
    ``torch==2.13.0`` from either."""
    return [f"{WHEEL_ARTIFACT_DIR}/{wheel_name}"] + [
        f"{p}=={package_version(p).split('+')[0]}" for p in PINNED]


def _signature(dim: int):
    """Outputs only: one ``dim``-wide float32 vector per text. No input schema: MLflow would
    then turn lists, arrays and single-column DataFrames into a frame with one named column (or
    refuse them); ``predict`` reads every shape itself (``pyfunc_input.py``)."""
    # lazy: mlflow takes seconds to import
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=None,
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]))
