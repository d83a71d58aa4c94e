"""The continual update's stages, declared once: the champion learns the documents it has not
seen, and replaces itself only if it learned them without forgetting what it knew.

ingest (only what is new) -> plan -> split -> train from the champion (replay + regulariser) ->
evaluate champion and challenger on old and new held-out data -> register the challenger ->
gate -> deploy (embed, index, link, switch the champion alias; drift report)

``run_continual`` runs them (``ctxvec update`` through the ``ctxvec-continual`` flow, which gives
each stage a Prefect task). The stages are not keyed: the update's own key (``UpdatePlan.key``:
parent version, snapshot, recipe) names its run folder and tags its registered version, so a
re-run after a crash resumes training, finds the registered challenger, reuses finished
embeddings and moves the alias only to a complete pair. Crash points (``ctxvec.faults``) after
training, after embedding and before the alias moves let the tests kill it at each stage.
"""

from __future__ import annotations

import logging
from typing import Any

from ctxvec.artifacts import RegisteredModel, TrainedModel
from ctxvec.config import CtxvecConfig
from ctxvec.continual.drift import drift_report
from ctxvec.continual.evaluate import PairReport, evaluate_pair, unmeasured
from ctxvec.continual.gate import decide, record_decision
from ctxvec.continual.plan import Domains, UpdatePlan, plan_update, snapshot_record, split_domains
from ctxvec.continual.register import register_challenger
from ctxvec.continual.train import train_challenger
from ctxvec.stages.graph import Call, Records, Stage, execute, run_stage
from ctxvec.stages.pipeline import GPU_TRAIN_TAG, INGEST
from ctxvec.stages.runs import deploy
from ctxvec.workspace import Workspace

log = logging.getLogger(__name__)


def split(cfg: CtxvecConfig, ws: Workspace, plan: UpdatePlan) -> Domains:
    return split_domains(cfg, plan)


def register(cfg: CtxvecConfig, ws: Workspace, plan: UpdatePlan, trained: TrainedModel,
             pair: PairReport) -> RegisteredModel:
    return register_challenger(cfg, ws, plan, trained, pair.challenger)


def gate(cfg: CtxvecConfig, ws: Workspace, reg: RegisteredModel,
         pair: PairReport) -> dict[str, Any]:
    """The gate's decision, recorded as tags of the challenger's version. An evaluation the
    recipe asks for that could not run is a failed check: no promotion without it."""
    decision = decide(cfg.continual.gate, pair.champion, pair.challenger.metrics,
                      unmeasured(cfg.evaluate, pair))
    record_decision(ws, reg, pair.champion, decision)
    return decision


def finish(cfg: CtxvecConfig, ws: Workspace, plan: UpdatePlan, trained: TrainedModel,
           reg: RegisteredModel, pair: PairReport, decision: dict[str, Any]) -> dict[str, Any]:
    """The update's outcome; a promoted challenger is deployed (embed, index, link, switch)
    and compared with its parent (drift)."""
    out = {"status": "promoted" if decision["promote"] else "rejected", "plan": plan.to_dict(),
           "version": reg.version, "gate": decision, "champion_metrics": pair.champion,
           "challenger_metrics": pair.challenger.metrics}
    if not decision["promote"]:
        return out
    dep = deploy(cfg, ws, snapshot_record(plan), trained.model_dir, reg.version, name=reg.name,
                 promote=True, reuse=True)
    out |= {"index": dep.index.to_dict(), "previous_champion": dep.previous_champion}
    try:
        out["drift"] = drift_report(ws, plan.name, plan.parent_version, reg.version)
    except Exception as e:  # the update is complete; a drift report is a bonus
        log.warning("update: drift report failed: %s", e)
    return out


def _not_ready(plan: UpdatePlan) -> bool:
    return plan.status != "ready"


PLAN = Stage("plan", ("continual", "registry"), (), plan_update, kind="io", halts=_not_ready)
SPLIT = Stage("split", ("continual",), ("plan",), split)
TRAIN = Stage("train", ("model", "train", "continual"), ("plan", "split"), train_challenger,
              tags=(GPU_TRAIN_TAG,))
EVALUATE = Stage("evaluate", ("evaluate", "continual"), ("plan", "split", "train"),
                 evaluate_pair)
REGISTER = Stage("register", ("registry", "continual"), ("plan", "train", "evaluate"), register,
                 kind="io")
GATE = Stage("gate", ("continual",), ("register", "evaluate"), gate, kind="io")
DEPLOY = Stage("deploy", ("embed", "index", "registry"),
               ("plan", "train", "register", "evaluate", "gate"), finish)

STAGES: tuple[Stage, ...] = (INGEST, PLAN, SPLIT, TRAIN, EVALUATE, REGISTER, GATE, DEPLOY)


def run_continual(cfg: CtxvecConfig, ws: Workspace, call: Call = run_stage) -> dict[str, Any]:
    """Every stage of the update in order; -> what ``ctxvec update`` prints."""
    return continual_summary(ws, execute(cfg, ws, STAGES, call))


def continual_summary(ws: Workspace, r: Records) -> dict[str, Any]:
    snap, plan = r["ingest"], r["plan"]
    if _not_ready(plan):
        return {"status": plan.status, "plan": plan.to_dict(), "snapshot": snap.to_dict()}
    return {**r["deploy"], "snapshot": snap.to_dict(), "workspace": ws.home}
