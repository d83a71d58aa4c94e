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
from ctxvec.model.encoder import Encoder, pick_device
from ctxvec.workspace import Workspace, write_json

log = logging.getLogger(__name__)


def run_evaluate(cfg: CtxvecConfig, ws: Workspace, trained: TrainedModel) -> EvalReport:
    started = time.time()
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    if trained.eval_loss is not None:
        metrics["mlm_eval_loss"] = trained.eval_loss
        metrics["mlm_perplexity"] = math.exp(min(trained.eval_loss, 50.0))
    ecfg = cfg.evaluate
    encoder = None

    def get_encoder() -> Encoder:
        nonlocal encoder
        if encoder is None:
            device = pick_device(cfg.train.device)
            # fp32 on a CPU keeps evaluation exact; a GPU evaluates in bf16 as it trains.
            encoder = Encoder.load(trained.model_dir, device=str(device),
                                   precision="bf16" if device.type == "cuda" else "fp32")
        return encoder

    for name, path in (("sts", ecfg.sts), ("retrieval", ecfg.retrieval), ("wic", ecfg.wic)):
        if path is None:
            skipped[name] = f"evaluate.{name} is not set in the recipe"
        elif not Path(path).exists():
            skipped[name] = f"data not found: {path}"
        elif name == "sts":
            sts = evaluate_sts(get_encoder(), read_sts(path), ecfg.batch_size)
            metrics["sts_spearman"], metrics["sts_pearson"] = sts["spearman"], sts["pearson"]
        elif name == "retrieval":
            from ctxvec.evaluate.retrieval import evaluate_retrieval, read_beir

            r = evaluate_retrieval(get_encoder(), read_beir(path, ecfg.retrieval_split),
                                   ecfg.batch_size)
            metrics.update({f"retrieval_{k.replace('@', '_at_')}": v for k, v in r.items()
                            if k != "n_queries"})
        else:
            from ctxvec.evaluate.wic import evaluate_wic

            w = evaluate_wic(get_encoder(), path, split=ecfg.wic_split,
                             batch_size=ecfg.batch_size)
            metrics["wic_accuracy"] = w["accuracy"]
    for name, why in skipped.items():  # not asked for is normal; asked for but missing is not
        log.log(logging.INFO if "not set" in why else logging.WARNING,
                "evaluate: %s skipped: %s", name, why)
    for name, value in metrics.items():
        log.info("evaluate: %s = %.4f", name, value)
    report = EvalReport(metrics=metrics, skipped=skipped)
    # Written beside the trained model: the evaluation belongs to that run.
    write_json(
        Path(trained.run_dir) / "evaluation.json",
        {"metrics": metrics, "skipped": skipped, "seconds": round(time.time() - started, 3)},
    )
    return report
