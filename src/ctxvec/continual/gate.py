"""The gate: promote the challenger only if it learned the new domain without forgetting.

``decide`` passes when the new-domain metric improves by more than ``gate.min_improvement`` and
no old-domain metric worsens by more than ``gate.tolerance`` (relative). The new-domain metric
(``gate.new_metric: auto``) is the label-free retrieval measure, ``new.pseudo_ndcg_at_10``,
wherever it was measured: it scores what an encoder is used for, finding documents, with no
labels, while the MLM loss of a sentence encoder need not move with retrieval quality at all;
the MLM loss, then ``halves_mrr``, otherwise. Every other metric measured on both (but
perplexities, which repeat the losses, and the training run's own held-out loss) is an
old-domain check, ``old.pseudo_ndcg_at_10`` among them.

It fails safe: an evaluation the recipe asks for that could not run (``unmeasured``, e.g.
``evaluate.sts`` set but its file missing) is a failed check, so a comparison that lacks it never
promotes. The decision and every check, with its numbers, become tags of the challenger's
version (``record_decision``), so why a version was or was not promoted can be read in the
registry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from ctxvec.artifacts import RegisteredModel
from ctxvec.config import ConfigError, GateConfig
from ctxvec.registry import Registry
from ctxvec.workspace import Workspace

log = logging.getLogger(__name__)


# gate.new_metric=auto: the first of these measured
AUTO_NEW_METRICS = ("new.pseudo_ndcg_at_10", "new.mlm_loss", "new.halves_mrr")


def lower_is_better(metric: str) -> bool:
    return metric.endswith(("loss", "perplexity"))


def decide(gcfg: GateConfig, champion: dict[str, float], challenger: dict[str, float],
           unmeasured: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The gate: every check with its numbers, and ``promote`` True only if all pass.
    ``unmeasured``: evaluation name -> why it could not run, for the evaluations the recipe
    asks for (``ctxvec.continual.evaluate.unmeasured``); each is a failed check."""
    def gain(m: str) -> float:  # relative improvement; negative: worse
        a, b = champion[m], challenger[m]
        d = (a - b) if lower_is_better(m) else (b - a)
        return d / max(abs(a), 1e-12)

    new_metric = gcfg.new_metric
    if new_metric == "auto":
        new_metric = next((m for m in AUTO_NEW_METRICS if m in champion), AUTO_NEW_METRICS[-1])
    if new_metric not in champion or new_metric not in challenger:
        raise ConfigError(f"continual.gate.new_metric={new_metric} was not measured (measured: "
                          f"{sorted(champion)})")
    checks = [{
        "metric": new_metric, "kind": "new-domain", "champion": champion[new_metric],
        "challenger": challenger[new_metric], "relative_gain": gain(new_metric),
        "rule": f"improves by more than {gcfg.min_improvement:g}",
        "passed": gain(new_metric) > gcfg.min_improvement,
    }]
    skip = {"mlm_eval_loss", "mlm_perplexity"}  # training's own held-out loss: not comparable
    for m in sorted(champion.keys() & challenger.keys()):
        if m.startswith("new.") or m in skip or m.endswith("perplexity"):
            continue
        g = gain(m)
        checks.append({
            "metric": m, "kind": "old-domain", "champion": champion[m],
            "challenger": challenger[m], "relative_gain": g,
            "rule": f"worsens by at most {gcfg.tolerance:g}", "passed": g >= -gcfg.tolerance,
        })
    checks += [{"metric": name, "kind": "unmeasured", "champion": None, "challenger": None,
                "relative_gain": None, "why": why, "passed": False,
                "rule": f"evaluate.{name} is set: it must be measured"}
               for name, why in sorted((unmeasured or {}).items())]
    reasons = [failure(c) for c in checks if not c["passed"]]
    return {"promote": not reasons, "new_metric": new_metric, "checks": checks,
            "reason": "; ".join(reasons) if reasons else "every check passed"}


def failure(c: dict[str, Any]) -> str:
    """Why check ``c`` failed, in one phrase."""
    if c["kind"] == "unmeasured":
        return (f"{c['metric']} could not be measured ({c['why']}): provide its data, or set "
                f"evaluate.{c['metric']}=null to update without it")
    verb = "did not improve" if c["kind"] == "new-domain" else "worsened"
    return (f"{c['metric']} {verb}: {c['champion']:.4g} -> {c['challenger']:.4g} "
            f"({100 * c['relative_gain']:+.1f}%; rule: {c['rule']})")


def record_decision(ws: Workspace, reg: RegisteredModel, champion: dict[str, float],
                    decision: dict[str, Any], what: str = "update") -> None:
    """The decision and its checks as tags of the challenger's version; ``what`` names the
    deciding run in the log (``update``; ``pipeline``: its promote stage)."""
    verdict = decision.get("decision") or ("promote" if decision["promote"] else "rejected")
    tags = {"gate.decision": verdict,
            "gate.reason": decision["reason"][:5000],
            "gate.checks": json.dumps(decision["checks"])[:5000]}
    tags |= {f"gate.champion.{k}": f"{v:.6g}" for k, v in champion.items()}
    Registry(ws).set_tags(reg.name, reg.version, tags)
    log.log(logging.INFO if decision["promote"] else logging.WARNING,
            "%s: gate %s version %s: %s", what,
            {"promote": "promotes", "held": "holds back"}.get(verdict, "rejects"), reg.version,
            decision["reason"])
