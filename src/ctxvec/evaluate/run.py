"""``run_evaluate``: every evaluation a recipe asks for, on a freshly trained model.

An evaluation whose data is missing is skipped with its reason recorded, never silently.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from ctxvec.artifacts import EvalReport, TrainedModel
from ctxvec.config import CtxvecConfig
from ctxvec.evaluate.sts import evaluate_sts, read_sts
from ctxvec.model.encoder import Encoder
from ctxvec.workspace import Workspace, write_json

log = logging.getLogger(__name__)


def run_evaluate(cfg: CtxvecConfig, ws: Workspace, trained: TrainedModel) -> EvalReport:
    started = time.time()
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    if trained.eval_loss is not None:
        metrics["mlm_eval_loss"] = trained.eval_loss
        metrics["mlm_perplexity"] = math.exp(min(trained.eval_loss, 50.0))
    if cfg.evaluate.sts is None:
        skipped["sts"] = "evaluate.sts is not set in the recipe"
    elif not Path(cfg.evaluate.sts).is_file():
        skipped["sts"] = f"data not found: {cfg.evaluate.sts}"
    else:
        encoder = Encoder.load(trained.model_dir, device=cfg.train.device)
        sts = evaluate_sts(encoder, read_sts(cfg.evaluate.sts), cfg.evaluate.batch_size)
        metrics["sts_spearman"] = sts["spearman"]
        metrics["sts_pearson"] = sts["pearson"]
    for name, why in skipped.items():
        log.warning("evaluate: %s skipped: %s", name, why)
    for name, value in metrics.items():
        log.info("evaluate: %s = %.4f", name, value)
    report = EvalReport(metrics=metrics, skipped=skipped)
    # Written beside the trained model: the evaluation belongs to that run.
    write_json(
        Path(trained.run_dir) / "evaluation.json",
        {"metrics": metrics, "skipped": skipped, "seconds": round(time.time() - started, 3)},
    )
    return report
