"""Evaluate champion and challenger on the same held-out data, so the gate compares like with
like.

``old.*`` and ``new.*`` metrics come from each domain's held-out documents:
- ``pseudo_ndcg_at_10`` / ``pseudo_mrr_at_10``, the label-free retrieval measure
  (``ctxvec.evaluate.pseudo``) on the domain's own held-out documents: their pseudo-queries,
  made as the mine stage makes its held-out ones (seeded by doc id, kept where BM25 over those
  documents ranks their document in its top ``adapt.pseudo_queries.filter_k``, one per
  document), found by exact dense search among them. The queries are made once per update and
  both models answer the very same ones;
- the MLM loss (with masks from a fixed seed, where the model has an MLM head);
- ``halves_mrr``, which finds each held-out document's second half from its first half among
  all of them.
The recipe's own evaluations (``run_evaluate``) run on both models too; ``unmeasured`` names
those the recipe asks for that could not run on either side, which the gate refuses to promote
without. The recipe's label-free row (``evaluate.pseudo``) reads the mine stage's folder, which
an update has none of: the domain figures above take its place. The champion's figures are
stored next to the challenger's run, with a digest of the queries they answered, so a re-run
does not evaluate it again unless the queries changed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctxvec.adapt.mine import heldout_queries, searched_texts
from ctxvec.adapt.search import DocSearch
from ctxvec.adapt.text import Doc
from ctxvec.artifacts import EvalReport, TrainedModel
from ctxvec.config import AdaptConfig, CtxvecConfig, EvaluateConfig
from ctxvec.continual.plan import Domains, UpdatePlan
from ctxvec.continual.train import has_mlm_head, pack_docs
from ctxvec.evaluate.pseudo import score_pseudo
from ctxvec.evaluate.run import EVALUATORS, run_evaluate
from ctxvec.model.encoder import Encoder, load_tokenizer, pick_device
from ctxvec.train.objectives.mlm import MaskedLM
from ctxvec.workspace import Workspace, read_json, sha256_text, write_json

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class HeldoutQueries:
    """One domain's held-out pseudo-queries and the documents they search, as the mine stage's
    ``heldout.parquet`` and ``docs.parquet`` hold them."""

    queries: list[str]
    relevant: list[str]  # each query's own document
    doc_ids: list[str]
    doc_texts: list[str]  # as searched: a sentence query's document without that sentence


def heldout_pseudo_queries(acfg: AdaptConfig, docs: list[Doc]) -> HeldoutQueries:
    """The pseudo-queries of ``docs`` that BM25 over ``docs`` alone finds again, made as the mine
    stage makes its held-out ones (``ctxvec.adapt.mine.heldout_queries``)."""
    search = DocSearch.build([d.full for d in docs])
    made, _ = heldout_queries(docs, range(len(docs)), search, acfg)
    return HeldoutQueries([q.text for q in made], [docs[q.row].doc_id for q in made],
                          [d.doc_id for d in docs], searched_texts(docs, made))


def domain_queries(acfg: AdaptConfig, domains: Domains) -> dict[str, HeldoutQueries]:
    """``old`` and ``new``: each domain's held-out pseudo-queries; a domain that makes none is
    left out (its pseudo figures are not measured), with a log line."""
    out = {}
    for dom, held in (("old", domains.old_heldout), ("new", domains.new_heldout)):
        docs = domains.docs(held)
        q = heldout_pseudo_queries(acfg, docs) if docs else None
        if q is None or not q.queries:
            log.info("update: %s domain: no held-out pseudo-query from its %d held-out "
                     "documents; %s.pseudo_* is not measured", dom, len(docs), dom)
            continue
        out[dom] = q
    return out


def pseudo_figures(encoder: Encoder, q: HeldoutQueries, batch_size: int) -> dict[str, float]:
    """nDCG@10 and MRR@10 of ``q``'s queries by exact dense search over its documents."""
    r = score_pseudo(encoder, q.queries, q.relevant, q.doc_ids, q.doc_texts, batch_size)
    return {"pseudo_ndcg_at_10": r["ndcg@10"], "pseudo_mrr_at_10": r["mrr@10"]}


def domain_metrics(cfg: CtxvecConfig, model_dir: str, domains: Domains,
                   queries: dict[str, HeldoutQueries] | None = None) -> dict[str, float]:
    """The ``old.*`` and ``new.*`` metrics of the model at ``model_dir``. ``queries``: the
    domains' held-out pseudo-queries (``domain_queries``), made here when not given."""
    if queries is None:
        queries = domain_queries(cfg.adapt, domains)
    device = pick_device(cfg.train.device)
    enc = Encoder.load(model_dir, device=str(device),
                       precision="bf16" if device.type == "cuda" else "fp32")
    bs = cfg.evaluate.batch_size
    out = {}
    for dom, texts in (("old", list(domains.old_heldout.values())),
                       ("new", list(domains.new_heldout.values()))):
        if dom in queries:
            out |= {f"{dom}.{k}": v for k, v in pseudo_figures(enc, queries[dom], bs).items()}
        loss = mlm_loss(model_dir, texts, cfg.train.seq_len, bs, str(device))
        if loss is not None:
            out[f"{dom}.mlm_loss"] = loss
            out[f"{dom}.mlm_perplexity"] = math.exp(min(loss, 50.0))
        mrr = halves_mrr(enc, texts, bs)
        if mrr is not None:
            out[f"{dom}.halves_mrr"] = mrr
    return out


def _evaluate(cfg: CtxvecConfig, ws: Workspace, trained: TrainedModel, domains: Domains,
              queries: dict[str, HeldoutQueries]) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, skipped evaluations) of one model: the recipe's evaluations and the domain
    metrics. The recipe's ``pseudo`` row is not run (an update has no mined folder); when the
    recipe asks for it, a domain without pseudo figures is what is missing, so the gate fails
    safe on it as on any evaluation that could not run."""
    recipe = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(
        update={"pseudo": False})})
    report = run_evaluate(recipe, ws, trained)
    metrics = {**report.metrics, **domain_metrics(cfg, trained.model_dir, domains, queries)}
    skipped = dict(report.skipped)
    if cfg.evaluate.pseudo:
        missing = [d for d in ("old", "new") if f"{d}.pseudo_ndcg_at_10" not in metrics]
        skipped.pop("pseudo", None)
        if missing:
            skipped["pseudo"] = (f"no held-out pseudo-query on the {' and '.join(missing)} "
                                 "domain (its held-out documents make none that BM25 finds "
                                 "again)")
    return metrics, skipped


def _digest(queries: dict[str, HeldoutQueries]) -> str:
    return sha256_text(json.dumps({d: asdict(q) for d, q in sorted(queries.items())}))[:16]


def evaluate_pair(cfg: CtxvecConfig, ws: Workspace, plan: UpdatePlan, domains: Domains,
                  trained: TrainedModel) -> PairReport:
    """The champion's metrics and the challenger's report, on the same held-out data and the
    same pseudo-queries."""
    run_dir = Path(trained.run_dir)
    queries = domain_queries(cfg.adapt, domains)
    digest = _digest(queries)
    parent_file = run_dir / "parent_evaluation.json"
    stored = read_json(parent_file) if parent_file.is_file() else {}
    if stored.get("queries") == digest:
        champion, champion_skipped = stored["metrics"], stored.get("skipped", {})
    else:
        parent_run = TrainedModel(str(run_dir / "parent"), plan.parent_dir, 0, 0, None, None,
                                  None)
        champion, champion_skipped = _evaluate(cfg, ws, parent_run, domains, queries)
        write_json(parent_file, {"version": plan.parent_version, "metrics": champion,
                                 "skipped": champion_skipped, "queries": digest})
    metrics, skipped = _evaluate(cfg, ws, trained, domains, queries)
    write_json(run_dir / "evaluation.json", {"metrics": metrics, "skipped": skipped})
    return PairReport(champion, EvalReport(metrics=metrics, skipped=skipped), champion_skipped)
