"""The pipeline's promotion gate: a run's new version replaces the champion only if it is no
worse on the run's own evaluation.

A pipeline run used to move ``champion`` to whatever it registered, so ``ctxvec run`` of the tiny
recipe after the demo made a 32-dimensional noise model the champion over an adapted MiniLM. Now
``registry.promote`` (``ctxvec run --promote``) decides:

- ``gate`` (the default): the champion, whatever recipe made it (another model, dimension,
  tokenizer or corpus), is evaluated with this run's evaluators on this run's data (the STS,
  BEIR and WiC files the recipe names, the mine stage's held-out pseudo-queries), exactly as the
  new version was by the evaluate stage. The new version is promoted when no metric measured on
  both is worse than the champion's by more than ``continual.gate.tolerance`` (relative), as the
  continual update's gate judges the old domain. It fails safe: an evaluation the recipe asks
  for that could not run on either model is a failed check, and when no evaluation can compare
  the two at all (none configured) the champion stays (``held``). The first version of a model
  has no champion to beat and is promoted.
- ``always``: the old behaviour; ``never``: register and index, leave the alias alone.

The decision, every check with its numbers and the champion's figures become tags of the new
version (``gate.decision``: promote, rejected or held; ``gate.reason``; ``gate.checks``), as
the continual gate's do; the champion's figures are also kept in the run folder
(``champion-evaluation.json``), so a re-run does not evaluate the same champion again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ctxvec.artifacts import EvalReport, MinedData, RegisteredModel, TrainedModel
from ctxvec.config import CtxvecConfig
from ctxvec.continual.evaluate import PairReport, unmeasured
from ctxvec.continual.gate import failure, lower_is_better, record_decision
from ctxvec.evaluate.run import run_evaluate
from ctxvec.registry import ModelVersion
from ctxvec.stages import keys, versions
from ctxvec.workspace import Workspace, read_json, write_json

log = logging.getLogger(__name__)

CHAMPION_EVAL = "champion-evaluation.json"  # in the new version's run folder
# the training run's own held-out loss: measured on different data for each model
NOT_COMPARABLE = frozenset({"mlm_eval_loss", "mlm_perplexity"})


def compare(tolerance: float, champion: dict[str, float], challenger: dict[str, float],
            missing: dict[str, str]) -> dict[str, Any]:
    """The gate's decision from both models' metrics on the same evaluation: every metric
    measured on both is a check (it may worsen by at most ``tolerance``, relative); an
    evaluation the recipe asks for that could not run (``missing``: name -> why) is a failed
    check. Nothing to compare: ``held``."""
    checks = []
    for m in sorted(champion.keys() & challenger.keys() - NOT_COMPARABLE):
        a, b = champion[m], challenger[m]
        gain = ((a - b) if lower_is_better(m) else (b - a)) / max(abs(a), 1e-12)
        checks.append({"metric": m, "kind": "recipe", "champion": a, "challenger": b,
                       "relative_gain": gain, "rule": f"worsens by at most {tolerance:g}",
                       "passed": gain >= -tolerance})
    checks += [{"metric": name, "kind": "unmeasured", "champion": None, "challenger": None,
                "relative_gain": None, "why": why, "passed": False,
                "rule": f"evaluate.{name} is set: it must be measured"}
               for name, why in sorted(missing.items())]
    if not checks:
        return {"promote": False, "decision": "held", "checks": [],
                "reason": "no evaluation compares the two models: the recipe asks for none "
                          "(evaluate.sts, retrieval, wic or pseudo)"}
    reasons = [_failure(c) for c in checks if not c["passed"]]
    return {"promote": not reasons, "decision": "rejected" if reasons else "promote",
            "checks": checks,
            "reason": "; ".join(reasons) if reasons else "no metric is worse than the champion's"}


def _failure(c: dict[str, Any]) -> str:
    if c["kind"] == "unmeasured":
        return f"{c['metric']} could not be measured ({c['why']})"
    return failure(c)


def champion_evaluation(cfg: CtxvecConfig, ws: Workspace, champion: ModelVersion,
                        trained: TrainedModel,
                        mined: MinedData | None) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, skipped evaluations) of the champion under this run's evaluators and data,
    kept in the new version's run folder under a key of what they depend on."""
    key = keys.digest(champion.name, champion.version, champion.run_id,
                      keys.section(cfg, "evaluate"), keys.fingerprint(keys.eval_data(cfg)),
                      mined.path if mined else None)
    stored_at = Path(trained.run_dir) / CHAMPION_EVAL
    stored = read_json(stored_at) if stored_at.is_file() else {}
    if stored.get("key") == key:
        return stored["metrics"], stored["skipped"]
    folder = versions.local_model_dir(ws, champion)
    as_run = TrainedModel(str(Path(trained.run_dir) / "champion"), str(folder), 0, 0, None, None,
                          None)
    report = run_evaluate(cfg, ws, as_run, mined)
    write_json(stored_at, {"key": key, "version": champion.version, "metrics": report.metrics,
                           "skipped": report.skipped})
    return report.metrics, report.skipped


def _outcome(reg: RegisteredModel, policy: str, decision: dict[str, Any],
             champion: str | None, previous: str | None, hint: str = "") -> dict[str, Any]:
    return {"version": reg.version, "policy": policy, "decision": decision["decision"],
            "reason": decision["reason"], "checks": decision.get("checks", []),
            "champion": champion, "previous_champion": previous, "hint": hint}


def decide(cfg: CtxvecConfig, ws: Workspace, reg: RegisteredModel, trained: TrainedModel,
           report: EvalReport, mined: MinedData | None,
           champion: ModelVersion | None) -> tuple[dict[str, Any], dict[str, float]]:
    """(the decision, the champion's metrics) for ``reg`` against ``champion`` under the
    recipe's ``registry.promote``."""
    policy = cfg.registry.promote
    if policy == "never":
        return {"promote": False, "decision": "held", "checks": [],
                "reason": "registry.promote=never"}, {}
    if champion is None:
        return {"promote": True, "decision": "promote", "checks": [],
                "reason": f"{reg.name} has no champion yet: its first version is promoted"}, {}
    if policy == "always":
        return {"promote": True, "decision": "promote", "checks": [],
                "reason": "registry.promote=always: "
                f"replaces version {champion.version} without comparing"}, {}
    try:
        metrics, skipped = champion_evaluation(cfg, ws, champion, trained, mined)
    except Exception as e:  # fail safe: a champion that cannot be evaluated is not replaced
        log.warning("promote: the champion (version %s) could not be evaluated", champion.version,
                    exc_info=True)
        return {"promote": False, "decision": "held", "checks": [],
                "reason": f"the champion (version "
                f"{champion.version}) could not be evaluated: {type(e).__name__}: {e}"}, {}
    missing = unmeasured(cfg.evaluate, PairReport(metrics, report, skipped))
    decision = compare(cfg.continual.gate.tolerance, metrics, report.metrics, missing)
    decision["reason"] = f"against version {champion.version}: {decision['reason']}"
    return decision, {k: v for k, v in metrics.items() if k not in NOT_COMPARABLE}


def promote_gated(cfg: CtxvecConfig, ws: Workspace, reg: RegisteredModel,
                  trained: TrainedModel, report: EvalReport,
                  mined: MinedData | None) -> dict[str, Any]:
    """Decide, record the decision on the version, and move ``champion`` only when it says so.
    -> what the run reports: version, policy, decision, reason, checks, the champion after the
    stage and the one it replaced (None when the alias did not move)."""
    champion = versions.champion(ws, reg.name)
    if champion is not None and champion.version == reg.version:  # a re-run of the same run
        return _outcome(reg, cfg.registry.promote, {"decision": "promote", "reason":
                        f"version {reg.version} is the champion already"}, reg.version, None)
    decision, champion_metrics = decide(cfg, ws, reg, trained, report, mined, champion)
    hint = "" if decision["promote"] else (
        f"{reg.uri} is registered but not promoted; to serve it: ctxvec models promote "
        f"{reg.version} (or run with --promote always)")
    record_decision(ws, reg, champion_metrics,
                    {**decision, "reason": "; ".join(filter(None, [decision["reason"], hint]))},
                    what="pipeline")
    versions.set_tags(ws, reg.name, reg.version, {"gate.policy": cfg.registry.promote,
                                                  "gate.champion_version":
                                                  champion.version if champion else ""})
    if not decision["promote"]:
        return _outcome(reg, cfg.registry.promote, decision,
                        champion.version if champion else None, None, hint)
    previous = versions.move_champion(ws, reg.name, reg.version)
    return _outcome(reg, cfg.registry.promote, decision, reg.version, previous)
