"""Train the challenger: continue training the parent on the new documents without forgetting.

The setup is the recipe's own (``ctxvec.train.run``: seed and threads, the model on its device,
one task per objective, the same loop, the same saved model); what differs is the data and the
penalties:
- a replay buffer: ``replay_ratio`` of every MLM batch (and of the corpus sentences of sentence
  objectives, and of the documents mined for ``data.source: mined``, ``continual.mining``) comes
  from earlier documents;
- a penalty towards the parent's weights (L2-SP, or EWC with a Fisher on earlier data);
- optionally, distillation from the parent's own stored chunk embeddings.
``train.anchor`` applies as in any training run (toward the parent, on top of the above).
The run folder is ``runs/continual-<plan key>``: a re-run reuses a finished one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ctxvec.artifacts import MinedData, TrainedModel
from ctxvec.config import ConfigError, CtxvecConfig
from ctxvec.continual.mining import mine_update
from ctxvec.continual.plan import Domains, UpdatePlan, trains_on_mined
from ctxvec.continual.regularizers import EWC, L2SP
from ctxvec.continual.replay import replay_count, replay_rows
from ctxvec.embed.corpus import read_vectors
from ctxvec.errors import UserInputError
from ctxvec.faults import crash_point
from ctxvec.registry import Registry
from ctxvec.tokenizer.packing import pack_texts
from ctxvec.train.datasets import Sampler, load_examples, sentences_of
from ctxvec.train.multitask import Task
from ctxvec.train.objectives import build_objective
from ctxvec.train.objectives.distill import EmbeddingDistillation
from ctxvec.train.objectives.mlm import MaskedLM
from ctxvec.train.objectives.sentences import SentenceView
from ctxvec.train.run import (
    Setup,
    anchored,
    finished_record,
    objective_task,
    prepare_model,
    save_model,
    seed_and_threads,
    train_logged,
    wants_mlm,
)
from ctxvec.workspace import Workspace, read_json, write_manifest

log = logging.getLogger(__name__)


def _tokenizer_json(model_dir: str):
    from tokenizers import Tokenizer  # lazy: only the packing of documents needs it

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def pack_docs(texts: list[str], model_dir: str, seq_len: int, mode: str) -> np.ndarray:
    if not texts:
        return np.zeros((0, seq_len), np.int32)
    return pack_texts(texts, _tokenizer_json(model_dir), seq_len, mode)["input_ids"]


def has_mlm_head(model_dir: str | Path) -> bool:
    config = read_json(Path(model_dir) / "config.json")
    return any(a.endswith("ForMaskedLM") for a in config.get("architectures") or [])


def distill_examples(ws: Workspace, plan: UpdatePlan, domains: Domains, n: int, seed: int):
    """(chunk text, the parent's stored vector) for chunks of earlier training documents."""
    index_uri = Registry(ws).resolve(plan.parent_ref).index_uri
    index_manifest = ws.stage_manifest(index_uri) if index_uri else None
    if index_manifest is None:
        raise UserInputError(f"distillation needs version {plan.parent_version}'s stored "
                             "embeddings, and it has no index on disk; set "
                             "continual.distill_weight=0 or rebuild them with ctxvec embed")
    vectors, meta = read_vectors(ws.local_dir(index_manifest["embeddings"]))
    doc_ids = meta.column("doc_id").to_pylist()
    starts, ends = meta.column("start").to_pylist(), meta.column("end").to_pylist()
    usable = [i for i, d in enumerate(doc_ids) if d in domains.old_train]
    if not usable:
        raise UserInputError("no stored chunk of version "
                             f"{plan.parent_version} belongs to an earlier training document")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(usable), min(n, len(usable)), replace=False)
    return [(domains.old_train[doc_ids[usable[i]]][starts[usable[i]]:ends[usable[i]]],
             vectors[usable[i]]) for i in sorted(pick)]


def _update_examples(cfg: CtxvecConfig, plan: UpdatePlan, domains: Domains, ocfg, index: int,
                     mode: str, counts: dict, mined: MinedData | None):
    """An objective's examples for the update: new documents plus replayed earlier ones (for
    ``data.source: mined``, the examples ``mine_update`` mined from them); a data file as in
    any run."""
    tcfg, ccfg = cfg.train, cfg.continual
    if ocfg.name == "mlm":
        new_rows = pack_docs(list(domains.new_train.values()), plan.parent_dir, tcfg.seq_len,
                             mode)
        old_rows = pack_docs(list(domains.old_train.values()), plan.parent_dir, tcfg.seq_len,
                             mode)
        replay = replay_rows(new_rows, old_rows, ccfg.replay_ratio, tcfg.seed)
        counts |= {"mlm_new_sequences": len(new_rows), "mlm_replay_sequences": len(replay)}
        return np.concatenate([new_rows, replay]) if len(replay) else new_rows
    if ocfg.data.source == "corpus":
        new = sentences_of(domains.new_train.values(), ocfg.data.max_examples)
        old = sentences_of(domains.old_train.values(), None)
        n_old = min(len(old), replay_count(len(new), ccfg.replay_ratio))
        rng = np.random.default_rng(tcfg.seed + index)
        counts |= {f"{ocfg.name}_new": len(new), f"{ocfg.name}_replay": n_old}
        return new + [old[j] for j in sorted(rng.choice(len(old), n_old, replace=False))]
    return load_examples(ocfg, None, mined)


def _penalties(cfg: CtxvecConfig, setup: Setup, plan: UpdatePlan, domains: Domains,
               mode: str) -> list:
    ccfg = cfg.continual
    if ccfg.regularizer == "l2sp" and ccfg.reg_weight > 0:
        return [L2SP(setup.model, ccfg.reg_weight)]
    if ccfg.regularizer == "ewc" and ccfg.reg_weight > 0:
        return [_ewc(setup, plan, domains, cfg, mode)]
    return []


def train_challenger(cfg: CtxvecConfig, ws: Workspace, plan: UpdatePlan,
                     domains: Domains) -> TrainedModel:
    """Continue training the parent on the new documents, with replay and regularisers."""
    started = time.time()
    tcfg, ccfg = cfg.train, cfg.continual
    run_dir = ws.runs / f"continual-{plan.key}"
    if (run_dir / "manifest.json").is_file():
        log.info("update: %s already trained this update; reusing it", run_dir.name)
        return finished_record(run_dir)
    seed_and_threads(tcfg)
    if wants_mlm(cfg) and not has_mlm_head(plan.parent_dir):
        log.warning("update: version %s has no MLM head: its encoder weights are kept, MLM "
                    "trains a new head (random init) on top", plan.parent_version)
    tasks, counts, mined = [], {}, None
    if trains_on_mined(cfg):  # once for every objective that reads it, before the model loads
        mined, mined_counts = mine_update(cfg, ws, plan, domains)
        counts |= mined_counts
    # the model starts from the parent version, whatever the recipe's model.init; its folder
    # was downloaded by plan_update. On train.device: the update trains in one process.
    from_parent = cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"init": plan.parent_ref})})
    setup = prepare_model(from_parent, ws, None, plan.parent_dir, device=tcfg.device)
    mode = "concat" if cfg.pack.mode == "pair" else cfg.pack.mode
    for i, ocfg in enumerate(tcfg.objectives):
        objective = build_objective(ocfg, setup.tokenizer, setup.settings, tcfg.seq_len)
        examples = _update_examples(cfg, plan, domains, ocfg, i, mode, counts, mined)
        tasks.append(objective_task(setup, ocfg, objective, examples, i, tcfg))
    if ccfg.distill_weight > 0:
        pairs = distill_examples(ws, plan, domains, ccfg.distill_examples, tcfg.seed)
        view = SentenceView(setup.tokenizer, setup.settings.max_length, setup.settings.pooling)
        tasks.append(Task(EmbeddingDistillation(view), pairs, ccfg.distill_weight,
                          tcfg.batch_size, Sampler(len(pairs), tcfg.seed + 97)))
        counts["distill_chunks"] = len(pairs)
    penalties = _penalties(cfg, setup, plan, domains, mode)
    log.info("update: training from version %s: %s, %s", plan.parent_version,
             ", ".join(f"{k} {v}" for k, v in counts.items()),
             ccfg.regularizer if penalties else "no regulariser")
    result = train_logged(run_dir, setup.model, anchored(setup, tcfg, tasks, penalties), tcfg)
    save_model(ws, run_dir, setup)
    summary = {"steps": result.steps if result else 0,
               "tokens_seen": result.tokens_seen if result else 0,
               "final_loss": result.final_loss if result else None, "parent": plan.parent_ref,
               "metrics": {}}
    write_manifest(run_dir, "train", started, **summary, update=plan.to_dict(), data=counts,
                   mined=mined.path if mined else None,
                   mined_counts=mined.counts if mined else None,
                   regularizer=ccfg.regularizer if penalties else "none",
                   config={"train": tcfg.model_dump(mode="json"),
                           "continual": ccfg.model_dump(mode="json")})
    crash_point("after-train")
    return TrainedModel(str(run_dir), str(run_dir / "model"), summary["steps"],
                        summary["tokens_seen"], summary["final_loss"], None, plan.parent_ref)


def _ewc(setup: Setup, plan: UpdatePlan, domains: Domains, cfg: CtxvecConfig, mode: str) -> EWC:
    model = setup.model
    if not hasattr(model, "base_model") or not has_mlm_head(plan.parent_dir):
        raise ConfigError("continual.regularizer=ewc estimates its Fisher with the MLM loss: it "
                          "needs a parent with an MLM head (use l2sp otherwise)")
    ccfg, tcfg = cfg.continual, cfg.train
    rows = pack_docs(list(domains.old_train.values()), plan.parent_dir, tcfg.seq_len, mode)
    if not len(rows):
        raise UserInputError("EWC needs earlier documents for its Fisher; there are none")
    mlm = MaskedLM(setup.tokenizer)
    rng = np.random.default_rng(tcfg.seed + 7)
    take = rng.choice(len(rows), min(len(rows), ccfg.ewc_batches * tcfg.batch_size),
                      replace=False)
    gen = torch.Generator().manual_seed(tcfg.seed + 7)
    batches = [mlm.collate(list(rows[take[i:i + tcfg.batch_size]]))
               for i in range(0, len(take), tcfg.batch_size)]
    return EWC(model, ccfg.reg_weight, lambda m, b: mlm.loss(m, b, gen), batches)
