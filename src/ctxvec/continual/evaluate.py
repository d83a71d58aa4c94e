"""Evaluate champion and challenger on the same held-out data, so the gate compares like with
like.

``old.*`` and ``new.*`` metrics come from each domain's held-out documents: the MLM loss (with
masks from a fixed seed, where the model has an MLM head) and ``halves_mrr``, a label-free
measure that finds each held-out document's second half from its first half among all of them.
The recipe's own evaluations (``run_evaluate``) run on both models too; ``unmeasured`` names
those the recipe asks for that could not run on either side, which the gate refuses to promote
without. The champion's figures are stored next to the challenger's run, so a re-run does not
evaluate it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctxvec.artifacts import EvalReport, TrainedModel
from ctxvec.config import CtxvecConfig, EvaluateConfig
from ctxvec.continual.plan import Domains, UpdatePlan
from ctxvec.continual.train import has_mlm_head, pack_docs
from ctxvec.evaluate.run import EVALUATORS, run_evaluate
from ctxvec.model.encoder import Encoder, load_tokenizer, pick_device
from ctxvec.train.objectives.mlm import MaskedLM
from ctxvec.workspace import Workspace, read_json, write_json

EVAL_SEED = 1_000_003  # held-out MLM masks are drawn from this seed: the same for both models


@dataclass(frozen=True)
class PairReport:
    """The champion's metrics and the challenger's report, measured on the same data."""

    champion: dict[str, float]
    challenger: EvalReport
    champion_skipped: dict[str, str] = field(default_factory=dict)  # evaluation -> reason


def unmeasured(ecfg: EvaluateConfig, pair: PairReport) -> dict[str, str]:
    """The evaluations the recipe asks for (``Evaluator.asked``) that were skipped for the
    challenger or the champion (their data is missing): evaluation name -> why. Without them
    the comparison lacks metrics the recipe wanted checked."""
    asked = [ev.name for ev in EVALUATORS if ev.asked(ecfg)]
    out = {}
    for name in asked:
        if name in pair.challenger.skipped:
            out[name] = pair.challenger.skipped[name]
        elif name in pair.champion_skipped:
            out[name] = f"champion: {pair.champion_skipped[name]}"
    return out


def mlm_loss(model_dir: str, texts: list[str], seq_len: int, batch_size: int,
             device: str) -> float | None:
    """Mean masked-LM loss on ``texts`` with masks drawn from a fixed seed; None without a head."""
    if not texts or not has_mlm_head(model_dir):
        return None
    from transformers import AutoModelForMaskedLM  # lazy: transformers' auto classes are slow

    rows = pack_docs(texts, model_dir, seq_len, "doc")
    model = AutoModelForMaskedLM.from_pretrained(model_dir).to(pick_device(device)).eval()
    objective = MaskedLM(load_tokenizer(Path(model_dir)))
    gen = torch.Generator().manual_seed(EVAL_SEED)
    total = n = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = objective.collate(list(rows[i:i + batch_size]))
            total += float(objective.loss(model, batch, gen)) * len(batch)
            n += len(batch)
    return total / n


def halves_mrr(encoder: Encoder, texts: list[str], batch_size: int) -> float | None:
    """Find each document's second half from its first half among all the held-out documents:
    the mean reciprocal rank. A label-free measure of how well the encoder's vectors tell this
    domain's documents apart."""
    firsts, seconds = [], []
    for t in texts:
        t = t.strip()
        mid = t.find(" ", len(t) // 2)
        if mid <= 0 or len(t) < 40:
            continue
        firsts.append(t[:mid][-1000:])
        seconds.append(t[mid + 1:][:1000])
    if len(firsts) < 2:
        return None
    a = encoder.encode(firsts, batch_size)
    b = encoder.encode(seconds, batch_size)
    sims = a @ b.T
    ranks = (sims > np.diag(sims)[:, None]).sum(axis=1) + 1
    return float(np.mean(1.0 / ranks))


def domain_metrics(cfg: CtxvecConfig, model_dir: str, domains: Domains) -> dict[str, float]:
    device = pick_device(cfg.train.device)
    enc = Encoder.load(model_dir, device=str(device),
                       precision="bf16" if device.type == "cuda" else "fp32")
    out = {}
    for dom, texts in (("old", list(domains.old_heldout.values())),
                       ("new", list(domains.new_heldout.values()))):
        loss = mlm_loss(model_dir, texts, cfg.train.seq_len, cfg.evaluate.batch_size,
                        str(device))
        if loss is not None:
            out[f"{dom}.mlm_loss"] = loss
            out[f"{dom}.mlm_perplexity"] = math.exp(min(loss, 50.0))
        mrr = halves_mrr(enc, texts, cfg.evaluate.batch_size)
        if mrr is not None:
            out[f"{dom}.halves_mrr"] = mrr
    return out


def evaluate_pair(cfg: CtxvecConfig, ws: Workspace, plan: UpdatePlan, domains: Domains,
                  trained: TrainedModel) -> PairReport:
    """The champion's metrics and the challenger's report, on the same held-out data."""
    run_dir = Path(trained.run_dir)
    parent_file = run_dir / "parent_evaluation.json"
    if parent_file.is_file():
        stored = read_json(parent_file)
        champion, champion_skipped = stored["metrics"], stored.get("skipped", {})
    else:
        parent_run = TrainedModel(str(run_dir / "parent"), plan.parent_dir, 0, 0, None, None,
                                  None)
        parent_report = run_evaluate(cfg, ws, parent_run)
        champion = {**parent_report.metrics, **domain_metrics(cfg, plan.parent_dir, domains)}
        champion_skipped = parent_report.skipped
        write_json(parent_file, {"version": plan.parent_version, "metrics": champion,
                                 "skipped": champion_skipped})
    report = run_evaluate(cfg, ws, trained)
    metrics = {**report.metrics, **domain_metrics(cfg, trained.model_dir, domains)}
    report = EvalReport(metrics=metrics, skipped=report.skipped)
    write_json(run_dir / "evaluation.json", {"metrics": metrics, "skipped": report.skipped})
    return PairReport(champion, report, champion_skipped)
