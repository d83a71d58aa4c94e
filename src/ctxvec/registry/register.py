"""Registering a trained encoder: one MLflow run (params, metrics, artifacts), the pyfunc model,
and a new version of ``registry.model_name`` tagged with its lineage and evaluation."""

from __future__ import annotations

import json
import logging
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
from ctxvec.refs import ModelRef
from ctxvec.registry.access import RegistryAccess
from ctxvec.registry.download import ENCODER_ARTIFACT
from ctxvec.registry.uris import fluent_uris
from ctxvec.workspace import sha256_file

log = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


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
) -> RegisteredModel:
    """Log a run (params, metrics, artifacts), the pyfunc model, and register a new version.

    ``snapshot`` is None for models fine-tuned on files rather than the corpus; the tokenizer
    hash then comes from the model's own tokenizer.json."""
    # lazy: mlflow takes seconds to import
    import mlflow
    from mlflow.entities import Param

    snapshot_id = snapshot.snapshot_id if snapshot else ""
    tok_hash = (tokenizer_art.sha256 if tokenizer_art
                else sha256_file(Path(trained.model_dir) / "tokenizer.json"))
    c = reg.client
    run_dir = Path(trained.run_dir)
    exp_id = experiment_id(reg, cfg.registry.experiment)
    parent_version = ""
    if trained.parent and ModelRef.parse(trained.parent).is_registry:
        parent_version = reg.resolve(trained.parent).version
    # The run and the pyfunc model go through MLflow's fluent API (log_model has no client
    # form), so the process-wide URIs point at this workspace for this block only.
    with fluent_uris(reg.uris), mlflow.start_run(experiment_id=exp_id,
                                                 run_name=cfg.name) as run:
        run_id = run.info.run_id
        params = [Param(k, str(v)[:500]) for k, v in flatten(cfg).items()]
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
        info = mlflow.pyfunc.log_model(
            name="encoder",
            python_model=str(PYFUNC_CODE),
            artifacts={ENCODER_ARTIFACT: trained.model_dir},
            input_example=["I saw a saw."],
            pip_requirements=_requirements(),
            registered_model_name=cfg.registry.model_name,
        )
    name, version = cfg.registry.model_name, str(info.registered_model_version)
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
        c.set_model_version_tag(name, version, k, v)
    c.set_registered_model_alias(name, "challenger", version)
    log.info("register: %s version %s (run %s)", name, version, run_id)
    return RegisteredModel(name, version, run_id, str(ModelRef.registered(name, version=version)))


def _requirements() -> list[str]:
    pkgs = ["torch", "transformers", "tokenizers", "safetensors", "numpy", "mlflow"]
    return [f"ctxvec=={__version__}"] + [f"{p}=={package_version(p)}" for p in pkgs]
