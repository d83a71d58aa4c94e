"""The continual update as a Prefect flow: one task per step of ``ctxvec.continual.update``.

ingest (only what is new) -> plan -> train from the champion (replay + regulariser) -> evaluate
champion and challenger on old and new held-out data -> register the challenger -> gate ->
embed -> index -> switch the champion alias -> drift report

Run it with ``ctxvec update --config RECIPE``, ``python flows/continual.py RECIPE [key=value ...]``
or a deployment whose entrypoint is ``flows/continual.py:continual`` (``ctxvec schedule``). Every
step can be re-run: after a crash the next run resumes training, finds the registered challenger
by its update key, reuses finished embeddings and moves the alias only to a complete pair.
"""

from __future__ import annotations

import sys

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ctxvec.config import load_config
from ctxvec.continual import update as u
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.workspace import Workspace

_IO = {"retries": 2, "retry_delay_seconds": 2, "cache_policy": NO_CACHE}
_COMPUTE = {"retries": 0, "cache_policy": NO_CACHE}


@task(name="ingest", **_IO)
def ingest_task(cfg, ws):
    return run_ingest(cfg, ws)


@task(name="plan", **_IO)
def plan_task(cfg, ws) -> u.UpdatePlan:
    return u.plan_update(cfg, ws)


@task(name="split", **_COMPUTE)
def split_task(cfg, plan) -> u.Domains:
    return u.split_domains(cfg, plan)


# tag gpu-train: a Prefect concurrency limit on it keeps two trainings off one GPU
@task(name="train", tags=["gpu-train"], **_COMPUTE)
def train_task(cfg, ws, plan, domains):
    return u.train_challenger(cfg, ws, plan, domains)


@task(name="evaluate", **_COMPUTE)
def evaluate_task(cfg, ws, plan, domains, trained):
    return u.evaluate_pair(cfg, ws, plan, domains, trained)


@task(name="register", **_IO)
def register_task(cfg, ws, plan, trained, report):
    return u.register_challenger(cfg, ws, plan, trained, report)


@task(name="gate", **_IO)
def gate_task(cfg, ws, reg, champion, report) -> dict:
    decision = u.decide(cfg.continual.gate, champion, report.metrics)
    u.record_decision(ws, reg, champion, decision)
    return decision


@task(name="deploy", **_COMPUTE)
def deploy_task(cfg, ws, plan, trained, reg, decision, champion, report) -> dict:
    return u.finish_update(cfg, ws, plan, trained, reg, decision, champion, report)


@flow(name="ctxvec-continual")
def continual(config: str, overrides: list[str] | None = None, home: str | None = None) -> dict:
    """Update the champion with the documents it has not seen; promote it only through the
    gate. ``home``: the workspace (default ``$CTXVEC_HOME``)."""
    cfg = load_config(config, overrides)
    # a folder or a store URI (s3://bucket/prefix): Workspace.at tells them apart
    ws = (Workspace.at(home) if home else Workspace.from_env()).ensure()
    snap = ingest_task(cfg, ws)
    plan = plan_task(cfg, ws)
    if plan.status != "ready":
        return {"status": plan.status, "plan": plan.to_dict(), "snapshot": snap.to_dict()}
    domains = split_task(cfg, plan)
    trained = train_task(cfg, ws, plan, domains)
    champion, report = evaluate_task(cfg, ws, plan, domains, trained)
    reg = register_task(cfg, ws, plan, trained, report)
    decision = gate_task(cfg, ws, reg, champion, report)
    out = deploy_task(cfg, ws, plan, trained, reg, decision, champion, report)
    return {**out, "snapshot": snap.to_dict(), "workspace": ws.home}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python flows/continual.py CONFIG.yaml [key=value ...]")
    print(continual(sys.argv[1], sys.argv[2:]))
