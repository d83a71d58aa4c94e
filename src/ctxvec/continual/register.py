"""Register the challenger once per update: a new version (alias ``challenger``) with its metrics,
its parent and the update's key; a re-run finds it by that key instead of registering again."""

from __future__ import annotations

import logging

from ctxvec.artifacts import EvalReport, RegisteredModel, TrainedModel
from ctxvec.config import CtxvecConfig
from ctxvec.continual.plan import UpdatePlan, snapshot_record
from ctxvec.registry import Registry
from ctxvec.workspace import Workspace

log = logging.getLogger(__name__)

UPDATE_KEY_TAG = "continual.key"


def register_challenger(cfg: CtxvecConfig, ws: Workspace, plan: UpdatePlan,
                        trained: TrainedModel, report: EvalReport) -> RegisteredModel:
    registry = Registry(ws)
    found = registry.version_with_tag(plan.name, UPDATE_KEY_TAG, plan.key)
    if found is not None:
        log.info("update: version %s is this update's challenger already", found.version)
        return RegisteredModel(plan.name, found.version, found.run_id or "", str(found.ref))
    reg = registry.register(cfg, snapshot_record(plan), None, trained, report)
    registry.set_tags(plan.name, reg.version, {
        UPDATE_KEY_TAG: plan.key, "continual.new_docs": str(plan.new_docs),
        "continual.parent_snapshot": plan.parent_snapshot,
        "continual.regularizer": cfg.continual.regularizer,
        "continual.replay_ratio": f"{cfg.continual.replay_ratio:g}",
    })
    return reg
