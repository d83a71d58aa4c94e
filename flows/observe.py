"""What a flow run shows in Prefect: ctxvec's own log lines, and artifacts that say what it did.

**Logs.** Prefect sends to its API only the lines of its own run loggers. ctxvec's lines (the
``ctxvec.*`` loggers: ingest counts, training losses, evaluation results, embed and index counts)
reach each task run's logs through ``ctxvec_logs``: for the length of the flow run, one Prefect
``APILogHandler`` on the ``ctxvec`` logger. A line logged inside a task is filed under that task
run, one logged between tasks under the flow run; a line from a thread that carries no Prefect
context (a pool worker) is filed under the flow run that attached the handler. The handler sends
to the API only: the console shows each line once, through whatever handler printed it before
(the CLI's stderr handler, Prefect's console handler in a worker). A logger level nobody set is
raised to INFO for the run, so a worker that never configured logging still sends ctxvec's INFO
lines; a level the user set (``ctxvec --log-level``) is kept. Nothing is attached when the user
already routes ``ctxvec`` through Prefect (``PREFECT_LOGGING_EXTRA_LOGGERS=ctxvec``): each line
is sent once.

**Artifacts** (``publish_pipeline``, ``publish_continual``), keyed by the registered model's name
so that each run adds a version of the same artifact: ``<name>-pipeline`` (a pipeline run's stage
counts and evaluation metrics), ``<name>-continual`` and ``<name>-gate`` (an update's outcome,
and the gate's decision with every check), ``<name>-mlflow`` (where the MLflow run and model
version are: links to an MLflow server's UI, or the ``mlflow ui`` command for the embedded
SQLite store). Their Markdown is made by ``ctxvec.stages.report``. A run whose artifacts cannot
be written (the API refused them) still completes: it logs a warning.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.context import FlowRunContext, get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS

from ctxvec.artifacts import RegisteredModel
from ctxvec.config import CtxvecConfig
from ctxvec.registry.uris import workspace_uris
from ctxvec.stages import Call, Stage
from ctxvec.stages import report as md
from ctxvec.workspace import Workspace

LOGGER = "ctxvec"


class _FlowRunLogs(APILogHandler):
    """Prefect's API log handler for the lines of one flow run: those logged in its context
    (Prefect files them under the task or flow run that logged them), and those logged with no
    Prefect context at all (a thread the run started), sent as if logged where the handler was
    made, so that they reach this run's server under this flow run. Lines of another flow run
    in this process are left to that run's own handler."""

    def __init__(self, flow_run_id: Any):
        super().__init__()
        self.flow_run_id = flow_run_id
        self.context = contextvars.copy_context()  # the flow run's context and settings

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ctx = get_run_context()
        except MissingContextError:  # a thread without Prefect's context
            self.context.copy().run(super().emit, record)
            return
        run = getattr(ctx, "flow_run", None)
        if (run.id if run is not None else ctx.task_run.flow_run_id) == self.flow_run_id:
            super().emit(record)


def _routed_by_prefect(logger: logging.Logger) -> bool:
    return (LOGGER in PREFECT_LOGGING_EXTRA_LOGGERS.value()
            or any(isinstance(h, APILogHandler) for h in logger.handlers))


@contextmanager
def ctxvec_logs() -> Iterator[None]:
    """Inside a flow run: send the ``ctxvec`` loggers' lines to this run's logs."""
    ctx = FlowRunContext.get()
    logger = logging.getLogger(LOGGER)
    if ctx is None or ctx.flow_run is None or _routed_by_prefect(logger):
        yield
        return
    handler = _FlowRunLogs(ctx.flow_run.id)
    level = logger.level
    if level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def recording(call: Call, records: dict[str, Any]) -> Call:
    """``call``, keeping each stage's record in ``records`` (by stage name) as it returns."""

    def wrapped(stage: Stage, cfg: CtxvecConfig, ws: Workspace, recs: tuple) -> Any:
        records[stage.name] = call(stage, cfg, ws, recs)
        return records[stage.name]

    return wrapped


# --- artifacts -----------------------------------------------------------------------------------


def _publish_mlflow(ws: Workspace, reg: RegisteredModel) -> None:
    tracking = workspace_uris(ws).tracking
    key = md.artifact_key(reg.name, "mlflow")
    create_markdown_artifact(md.mlflow_markdown(tracking, reg.run_id, reg.name, reg.version),
                             key=key, description=f"MLflow run and model version {reg.uri}")
    links = md.mlflow_links(tracking, reg.run_id, reg.name, reg.version)
    if links:
        create_link_artifact(links["run"], link_text=f"MLflow run of {reg.uri}",
                             key=md.artifact_key(reg.name, "mlflow-run"),
                             description=f"the MLflow run that registered {reg.uri}")


def _safely(what: str, fn: Any, *args: Any) -> None:
    """Artifacts are a report of a run that is done: failing to write them fails nothing."""
    try:
        fn(*args)
    except Exception as e:
        get_run_logger().warning("%s: could not create the Prefect artifact: %s", what, e)


def publish_pipeline(cfg: CtxvecConfig, ws: Workspace, summary: dict[str, Any],
                     records: dict[str, Any]) -> None:
    """The artifacts of a pipeline run (see the module docstring)."""
    name = cfg.registry.model_name

    def summary_artifact() -> None:
        create_markdown_artifact(
            md.pipeline_markdown(summary, f"ctxvec-pipeline: {cfg.name}"),
            key=md.artifact_key(name, "pipeline"),
            description=f"stage counts and evaluation of recipe {cfg.name}")
        if summary.get("gate"):
            create_markdown_artifact(md.gate_markdown(summary["gate"], summary["model"]["version"]),
                                     key=md.artifact_key(name, "gate"),
                                     description="the gate's decision and every check")

    _safely("pipeline summary", summary_artifact)
    if isinstance(records.get("register"), RegisteredModel):
        _safely("MLflow", _publish_mlflow, ws, records["register"])


def publish_continual(cfg: CtxvecConfig, ws: Workspace, summary: dict[str, Any],
                      records: dict[str, Any]) -> None:
    """The artifacts of a continual update (see the module docstring)."""
    name = cfg.registry.model_name

    def summary_artifacts() -> None:
        create_markdown_artifact(
            md.continual_markdown(summary, f"ctxvec-continual: {cfg.name}"),
            key=md.artifact_key(name, "continual"),
            description=f"continual update of recipe {cfg.name}: {summary['status']}")
        if summary.get("gate"):
            create_markdown_artifact(
                md.gate_markdown(summary["gate"], summary["version"],
                                 summary["plan"]["parent_version"]),
                key=md.artifact_key(name, "gate"),
                description=f"the gate {summary['status']} version {summary['version']}")

    _safely("continual summary", summary_artifacts)
    if isinstance(records.get("register"), RegisteredModel):
        _safely("MLflow", _publish_mlflow, ws, records["register"])
