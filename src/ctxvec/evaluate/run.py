"""``run_evaluate``: every evaluation a recipe asks for, on a freshly trained model.

The evaluations are one table, ``EVALUATORS``: each row names the ``evaluate.<name>`` key that
points at its data and a function ``(encoder, path, evaluate config) -> metrics``; a row whose
data is not a file the recipe names says where it comes from (``data``): the label-free
``pseudo`` row takes the mine stage's folder, handed in as ``mined``. Adding an
evaluator is its own module, one row here and one key in ``EvaluateConfig``
(``docs/extending.md``). An evaluation whose data is missing is skipped with its reason
recorded, never silently.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ctxvec.artifacts import EvalReport, MinedData, TrainedModel
from ctxvec.config import CtxvecConfig, EvaluateConfig
from ctxvec.evaluate.pseudo import evaluate_pseudo
from ctxvec.evaluate.retrieval import evaluate_retrieval, read_beir
from ctxvec.evaluate.wic import evaluate_wic
from ctxvec.model.encoder import Encoder, pick_device
from ctxvec.train.sts import evaluate_sts, read_sts
from ctxvec.workspace import Workspace, write_json

log = logging.getLogger(__name__)

Metrics = dict[str, float]
# (evaluate config, the mined record or None) -> (the data's path, or None and why not)
DataOf = Callable[[EvaluateConfig, MinedData | None], tuple[str | None, str]]


def _named_by_config(name: str) -> DataOf:
    def data(ecfg: EvaluateConfig, mined: MinedData | None) -> tuple[str | None, str]:
        return getattr(ecfg, name), f"evaluate.{name} is not set in the recipe"

    return data


def _mined_folder(ecfg: EvaluateConfig, mined: MinedData | None) -> tuple[str | None, str]:
    if not ecfg.pseudo:
        return None, "evaluate.pseudo is not set in the recipe"
    if mined is None:
        return None, "no mined data: the mine stage did not run"
    return mined.path, ""


@dataclass(frozen=True)
class Evaluator:
    """One evaluation: ``data`` finds its data (by default the file ``evaluate.<name>``
    names); ``run`` scores an encoder on it."""

    name: str
    run: Callable[[Encoder, str, EvaluateConfig], Metrics]
    data: DataOf | None = None

    def asked(self, ecfg: EvaluateConfig) -> bool:
        """Whether the recipe asks for this evaluation: its ``evaluate.<name>`` key is set (a
        data path, or true)."""
        return bool(getattr(ecfg, self.name))

    def path(self, ecfg: EvaluateConfig, mined: MinedData | None) -> tuple[str | None, str]:
        return (self.data or _named_by_config(self.name))(ecfg, mined)


def _sts(encoder: Encoder, path: str, ecfg: EvaluateConfig) -> Metrics:
    r = evaluate_sts(encoder, read_sts(path), ecfg.batch_size)
    return {"sts_spearman": r["spearman"], "sts_pearson": r["pearson"]}


def _retrieval(encoder: Encoder, path: str, ecfg: EvaluateConfig) -> Metrics:
    r = evaluate_retrieval(encoder, read_beir(path, ecfg.retrieval_split), ecfg.batch_size)
    return {f"retrieval_{k.replace('@', '_at_')}": v for k, v in r.items() if k != "n_queries"}


def _wic(encoder: Encoder, path: str, ecfg: EvaluateConfig) -> Metrics:
    r = evaluate_wic(encoder, path, split=ecfg.wic_split, batch_size=ecfg.batch_size)
    return {"wic_accuracy": r["accuracy"]}


def _pseudo(encoder: Encoder, path: str, ecfg: EvaluateConfig) -> Metrics:
    r = evaluate_pseudo(encoder, path, ecfg.batch_size)
    return {"pseudo_ndcg_at_10": r["ndcg@10"], "pseudo_mrr_at_10": r["mrr@10"]}


EVALUATORS: tuple[Evaluator, ...] = (
    Evaluator("sts", _sts),
    Evaluator("retrieval", _retrieval),
    Evaluator("wic", _wic),
    Evaluator("pseudo", _pseudo, _mined_folder),
)


def run_evaluate(cfg: CtxvecConfig, ws: Workspace, trained: TrainedModel,
                 mined: MinedData | None = None) -> EvalReport:
    """Every evaluation the recipe asks for on the trained model; ``mined``: the mine stage's
    record, whose held-out pseudo-queries the label-free evaluation (``evaluate.pseudo``)
    scores."""
    started = time.time()
    metrics: Metrics = {}
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

    for ev in EVALUATORS:
        path, why = ev.path(ecfg, mined)
        if path is None:
            skipped[ev.name] = why
        elif not Path(path).exists():
            skipped[ev.name] = f"data not found: {path}"
        else:
            metrics.update(ev.run(get_encoder(), path, ecfg))
    asked = {ev.name for ev in EVALUATORS if ev.asked(ecfg)}
    for name, why in skipped.items():  # not asked for is normal; asked for but missing is not
        log.log(logging.WARNING if name in asked else logging.INFO,
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
