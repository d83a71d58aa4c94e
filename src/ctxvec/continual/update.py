"""The continual update: the champion learns the documents it has not seen, and replaces itself
only if it learned them without forgetting what it knew.

1. ``plan_update``: the champion's ``data_snapshot`` tag says what it has seen; the documents
   whose newest version lives in a later snapshot are the new domain, the rest the old one. Every
   ``continual.heldout_every``-th document of each domain (by a hash of its id) is held out.
2. ``train_challenger``: continue training from the champion's weights (MLM on packed new
   documents, and any other objectives of the recipe) with
   - a replay buffer: ``replay_ratio`` of every MLM batch comes from earlier documents;
   - a penalty towards the champion's weights (L2-SP, or EWC with a Fisher on earlier data);
   - optionally, distillation from the champion's own stored chunk embeddings.
   Its run folder is keyed by (champion version, snapshot, recipe): a re-run resumes or reuses it.
3. ``evaluate_pair``: champion and challenger on the same held-out sets: ``old.*`` and ``new.*``
   (MLM loss where the model has an MLM head; ``halves_mrr``, which finds each held-out
   document's second half from its first half among all of them), plus the recipe's evaluations.
4. ``register_challenger``: a new version (alias ``challenger``) with those metrics, its parent
   and its update key; a re-run finds it by the key instead of registering it again.
5. ``decide``: promote only if the new-domain metric improves and no old-domain metric worsens by
   more than ``gate.tolerance``; the decision and every check are tags of the version.
6. ``deploy``: embed the corpus with the challenger, build its own index, link it, then move the
   ``champion`` alias: the one write that switches what serves. Servers read the alias and then
   that version's index, so they see the old pair or the new pair, never a mix.

Crash points (``ctxvec.faults``) after training, after embedding and between linking the index
and moving the alias let the tests kill the update at each stage and re-run it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctxvec.artifacts import EvalReport, RegisteredModel, Snapshot, TrainedModel
from ctxvec.config import ConfigError, CtxvecConfig, GateConfig
from ctxvec.errors import UserInputError
from ctxvec.faults import crash_point
from ctxvec.ingest.corpus import committed_snapshots, iter_corpus
from ctxvec.model.encoder import Encoder, pick_device, save_encoder
from ctxvec.workspace import Workspace, read_json, sha256_text, write_json, write_manifest

log = logging.getLogger(__name__)

UPDATE_KEY_TAG = "continual.key"
EVAL_SEED = 1_000_003  # held-out MLM masks are drawn from this seed: the same for both models


@dataclass(frozen=True)
class UpdatePlan:
    status: str  # "ready" | "nothing-new"
    name: str
    parent_version: str
    parent_dir: str
    parent_snapshot: str
    snapshot_id: str  # the newest snapshot: the challenger's data_snapshot
    corpus: list[str]  # every snapshot folder, oldest first
    new_docs: int
    old_docs: int
    key: str  # (parent version, snapshot, recipe): names the run and tags the version

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Domains:
    """Texts by doc_id: training and held-out documents of the old and the new domain."""

    old_train: dict[str, str] = field(default_factory=dict)
    old_heldout: dict[str, str] = field(default_factory=dict)
    new_train: dict[str, str] = field(default_factory=dict)
    new_heldout: dict[str, str] = field(default_factory=dict)


def _hash_bucket(doc_id: str, every: int) -> bool:
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")
    return h % every == 0


def _update_key(cfg: CtxvecConfig, parent_version: str, snapshot_id: str) -> str:
    what = {
        "parent": parent_version, "snapshot": snapshot_id,
        "continual": cfg.continual.model_dump(mode="json", exclude={"gate"}),
        "train": cfg.train.model_dump(mode="json", exclude={"resume", "device", "threads"}),
        "pack": cfg.pack.mode,
    }
    return sha256_text(json.dumps(what, sort_keys=True))[:12]


def plan_update(cfg: CtxvecConfig, ws: Workspace) -> UpdatePlan:
    """What the update would do: which version it starts from and how much is new."""
    from ctxvec.registry.store import get_version, materialize

    name, ccfg = cfg.registry.model_name, cfg.continual
    ref = (f"models:/{name}/{ccfg.parent}" if ccfg.parent.isdigit()
           else f"models:/{name}@{ccfg.parent}")
    info = get_version(ws, ref)
    parent_snapshot = info.tags.get("data_snapshot", "")
    if not parent_snapshot:
        raise UserInputError(
            f"{ref} (version {info.version}) records no data_snapshot: it was not trained on "
            "this workspace's corpus, so there is no 'new since' to update it with")
    snaps = committed_snapshots(ws)
    if parent_snapshot not in {p.name for p in snaps}:
        raise UserInputError(f"{ref} was trained on snapshot {parent_snapshot}, which is not in "
                             f"{ws.snapshots}: is CTXVEC_HOME the workspace it was trained in?")
    new = old = 0
    for batch in iter_corpus([str(p) for p in snaps], ("snapshot",)):
        col = batch.column(0).to_pylist()
        n_new = sum(s > parent_snapshot for s in col)
        new, old = new + n_new, old + len(col) - n_new
    latest = snaps[-1].name
    status = "ready" if new >= ccfg.min_new_docs else "nothing-new"
    plan = UpdatePlan(status, name, info.version, str(materialize(ref, ws.root)), parent_snapshot,
                      latest, [str(p) for p in snaps], new, old,
                      _update_key(cfg, info.version, latest))
    log.info("update: %s version %s saw snapshot %s; %d new and %d earlier documents: %s",
             name, info.version, parent_snapshot, new, old, status)
    return plan


def split_domains(cfg: CtxvecConfig, plan: UpdatePlan) -> Domains:
    """Each document's newest text, by domain, with every ``heldout_every``-th held out."""
    d = Domains()
    every, cap = cfg.continual.heldout_every, cfg.continual.eval_docs
    for batch in iter_corpus(plan.corpus, ("doc_id", "text", "snapshot")):
        for doc_id, text, snap in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            is_new = snap > plan.parent_snapshot
            if _hash_bucket(doc_id, every):
                held = d.new_heldout if is_new else d.old_heldout
                if len(held) < cap:
                    held[doc_id] = text
                continue
            (d.new_train if is_new else d.old_train)[doc_id] = text
    if not d.new_train:
        raise UserInputError(f"all {len(d.new_heldout)} new documents were held out for "
                             "evaluation: lower continual.heldout_every or add more data")
    return d


# --- training -------------------------------------------------------------------------------


def _tokenizer_json(model_dir: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def pack_docs(texts: list[str], model_dir: str, seq_len: int, mode: str) -> np.ndarray:
    from ctxvec.tokenizer.packing import pack_texts

    if not texts:
        return np.zeros((0, seq_len), np.int32)
    return pack_texts(texts, _tokenizer_json(model_dir), seq_len, mode)["input_ids"]


def has_mlm_head(model_dir: str | Path) -> bool:
    config = read_json(Path(model_dir) / "config.json")
    return any(a.endswith("ForMaskedLM") for a in config.get("architectures") or [])


def replay_count(n_new: int, ratio: float) -> int:
    """Earlier examples to mix with ``n_new`` new ones so that they make ``ratio`` of the data."""
    return int(round(n_new * ratio / (1 - ratio))) if ratio > 0 else 0


def _replay_rows(new_rows: np.ndarray, old_rows: np.ndarray, ratio: float,
                 seed: int) -> np.ndarray:
    """``ratio / (1 - ratio)`` earlier rows per new row (fewer if that many do not exist)."""
    if ratio <= 0 or not len(old_rows):
        return old_rows[:0]
    want = replay_count(len(new_rows), ratio)
    if want > len(old_rows):
        log.warning("update: replay wants %d earlier sequences, only %d exist: using all",
                    want, len(old_rows))
        want = len(old_rows)
    pick = np.random.default_rng(seed).choice(len(old_rows), want, replace=False)
    return old_rows[np.sort(pick)]


def _distill_examples(ws: Workspace, plan: UpdatePlan, domains: Domains, n: int, seed: int):
    """(chunk text, the parent's stored vector) for chunks of earlier training documents."""
    from ctxvec.embed.corpus import read_vectors
    from ctxvec.registry.store import get_version

    index_uri = get_version(ws, f"models:/{plan.name}/{plan.parent_version}").tags.get(
        "index_uri")
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


def train_challenger(cfg: CtxvecConfig, ws: Workspace, plan: UpdatePlan,
                     domains: Domains) -> TrainedModel:
    """Continue training the parent on the new documents, with replay and regularisers."""
    from ctxvec.continual.regularizers import L2SP
    from ctxvec.model.bert import build_model
    from ctxvec.train.datasets import Sampler, load_examples, sentences_of
    from ctxvec.train.multitask import MultiTask, Task
    from ctxvec.train.objectives import build_objective
    from ctxvec.train.objectives.distill import EmbeddingDistillation
    from ctxvec.train.objectives.sentences import SentenceView
    from ctxvec.train.run import train_logged

    started = time.time()
    tcfg, ccfg = cfg.train, cfg.continual
    run_dir = ws.runs / f"continual-{plan.key}"
    if (run_dir / "manifest.json").is_file():
        m = read_json(run_dir / "manifest.json")
        log.info("update: %s already trained this update; reusing it", run_dir.name)
        return TrainedModel(str(run_dir), str(run_dir / "model"), m["steps"], m["tokens_seen"],
                            m["final_loss"], None, m["parent"], m.get("metrics", {}))
    torch.manual_seed(tcfg.seed)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    has_mlm = any(o.name == "mlm" for o in tcfg.objectives)
    if has_mlm and not has_mlm_head(plan.parent_dir):
        log.warning("update: version %s has no trained MLM head; MLM starts with a random one",
                    plan.parent_version)
    mcfg = cfg.model.model_copy(update={"init": plan.parent_dir})
    tokenizer, model, settings, _ = build_model(cfg.model_copy(update={"model": mcfg}), ws.root,
                                                None, mlm=has_mlm)
    device = pick_device(tcfg.device)
    model.to(device)
    mode = "concat" if cfg.pack.mode == "pair" else cfg.pack.mode
    tasks, counts = [], {}
    for i, ocfg in enumerate(tcfg.objectives):
        objective = build_objective(ocfg, tokenizer, settings, tcfg.seq_len)
        if ocfg.name == "mlm":
            new_rows = pack_docs(list(domains.new_train.values()), plan.parent_dir,
                                 tcfg.seq_len, mode)
            old_rows = pack_docs(list(domains.old_train.values()), plan.parent_dir,
                                 tcfg.seq_len, mode)
            replay = _replay_rows(new_rows, old_rows, ccfg.replay_ratio, tcfg.seed)
            examples = np.concatenate([new_rows, replay]) if len(replay) else new_rows
            counts |= {"mlm_new_sequences": len(new_rows), "mlm_replay_sequences": len(replay)}
        elif ocfg.data.source == "corpus":
            new = sentences_of(domains.new_train.values(), ocfg.data.max_examples)
            old = sentences_of(domains.old_train.values(), None)
            n_old = min(len(old), replay_count(len(new), ccfg.replay_ratio))
            rng = np.random.default_rng(tcfg.seed + i)
            examples = new + [old[j] for j in sorted(rng.choice(len(old), n_old, replace=False))]
            counts |= {f"{ocfg.name}_new": len(new), f"{ocfg.name}_replay": n_old}
        else:
            examples = load_examples(ocfg, None)
        if getattr(objective, "attach", None):
            objective.attach(model.config.hidden_size, device)
        bs = ocfg.batch_size or tcfg.batch_size
        tasks.append(Task(objective, examples, ocfg.weight, bs, Sampler(len(examples),
                                                                        tcfg.seed + i)))
    if ccfg.distill_weight > 0:
        pairs = _distill_examples(ws, plan, domains, ccfg.distill_examples, tcfg.seed)
        view = SentenceView(tokenizer, settings.max_length, settings.pooling)
        tasks.append(Task(EmbeddingDistillation(view), pairs, ccfg.distill_weight,
                          tcfg.batch_size, Sampler(len(pairs), tcfg.seed + 97)))
        counts["distill_chunks"] = len(pairs)
    penalties = []
    if ccfg.regularizer == "l2sp" and ccfg.reg_weight > 0:
        penalties.append(L2SP(model, ccfg.reg_weight))
    elif ccfg.regularizer == "ewc" and ccfg.reg_weight > 0:
        penalties.append(_ewc(model, tokenizer, plan, domains, cfg, mode))
    log.info("update: training from version %s: %s, %s", plan.parent_version,
             ", ".join(f"{k} {v}" for k, v in counts.items()),
             ccfg.regularizer if penalties else "no regulariser")
    result = train_logged(run_dir, model, MultiTask(tasks, penalties), tcfg)
    with ws.stage_dir(run_dir / "model") as tmp:
        model.to("cpu")
        save_encoder(model, tokenizer, settings, tmp)
    parent_ref = f"models:/{plan.name}/{plan.parent_version}"
    summary = {"steps": result.steps if result else 0,
               "tokens_seen": result.tokens_seen if result else 0,
               "final_loss": result.final_loss if result else None, "parent": parent_ref,
               "metrics": {}}
    write_manifest(run_dir, "train", started, **summary, update=plan.to_dict(), data=counts,
                   regularizer=ccfg.regularizer if penalties else "none",
                   config={"train": tcfg.model_dump(mode="json"),
                           "continual": ccfg.model_dump(mode="json")})
    crash_point("after-train")
    return TrainedModel(str(run_dir), str(run_dir / "model"), summary["steps"],
                        summary["tokens_seen"], summary["final_loss"], None, parent_ref)


def _ewc(model, tokenizer, plan: UpdatePlan, domains: Domains, cfg: CtxvecConfig, mode: str):
    from ctxvec.continual.regularizers import EWC
    from ctxvec.train.objectives.mlm import MaskedLM

    if not hasattr(model, "base_model") or not has_mlm_head(plan.parent_dir):
        raise ConfigError("continual.regularizer=ewc estimates its Fisher with the MLM loss: it "
                          "needs a parent with an MLM head (use l2sp otherwise)")
    ccfg, tcfg = cfg.continual, cfg.train
    rows = pack_docs(list(domains.old_train.values()), plan.parent_dir, tcfg.seq_len, mode)
    if not len(rows):
        raise UserInputError("EWC needs earlier documents for its Fisher; there are none")
    mlm = MaskedLM(tokenizer)
    rng = np.random.default_rng(tcfg.seed + 7)
    take = rng.choice(len(rows), min(len(rows), ccfg.ewc_batches * tcfg.batch_size),
                      replace=False)
    gen = torch.Generator().manual_seed(tcfg.seed + 7)
    batches = [mlm.collate(list(rows[take[i:i + tcfg.batch_size]]))
               for i in range(0, len(take), tcfg.batch_size)]
    return EWC(model, ccfg.reg_weight, lambda m, b: mlm.loss(m, b, gen), batches)


# --- evaluation and the gate -------------------------------------------------------------


def mlm_loss(model_dir: str, texts: list[str], seq_len: int, batch_size: int,
             device: str) -> float | None:
    """Mean masked-LM loss on ``texts`` with masks drawn from a fixed seed; None without a head."""
    if not texts or not has_mlm_head(model_dir):
        return None
    from transformers import AutoModelForMaskedLM

    from ctxvec.model.encoder import load_tokenizer
    from ctxvec.train.objectives.mlm import MaskedLM

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
                  trained: TrainedModel) -> tuple[dict[str, float], EvalReport]:
    """-> (the champion's metrics, the challenger's report), on the same held-out data."""
    from ctxvec.evaluate.run import run_evaluate

    run_dir = Path(trained.run_dir)
    parent_file = run_dir / "parent_evaluation.json"
    if parent_file.is_file():
        champion = read_json(parent_file)["metrics"]
    else:
        parent_run = TrainedModel(str(run_dir / "parent"), plan.parent_dir, 0, 0, None, None,
                                  None)
        champion = {**run_evaluate(cfg, ws, parent_run).metrics,
                    **domain_metrics(cfg, plan.parent_dir, domains)}
        write_json(parent_file, {"version": plan.parent_version, "metrics": champion})
    report = run_evaluate(cfg, ws, trained)
    metrics = {**report.metrics, **domain_metrics(cfg, trained.model_dir, domains)}
    report = EvalReport(metrics=metrics, skipped=report.skipped)
    write_json(run_dir / "evaluation.json", {"metrics": metrics, "skipped": report.skipped})
    return champion, report


def lower_is_better(metric: str) -> bool:
    return metric.endswith(("loss", "perplexity"))


def decide(gcfg: GateConfig, champion: dict[str, float],
           challenger: dict[str, float]) -> dict[str, Any]:
    """The gate: every check with its numbers, and ``promote`` True only if all pass."""
    def gain(m: str) -> float:  # relative improvement; negative: worse
        a, b = champion[m], challenger[m]
        d = (a - b) if lower_is_better(m) else (b - a)
        return d / max(abs(a), 1e-12)

    new_metric = gcfg.new_metric
    if new_metric == "auto":
        new_metric = "new.mlm_loss" if "new.mlm_loss" in champion else "new.halves_mrr"
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
    failed = [c for c in checks if not c["passed"]]
    reasons = []
    for c in failed:
        verb = "did not improve" if c["kind"] == "new-domain" else "worsened"
        reasons.append(f"{c['metric']} {verb}: {c['champion']:.4g} -> {c['challenger']:.4g} "
                       f"({100 * c['relative_gain']:+.1f}%; rule: {c['rule']})")
    return {"promote": not failed, "new_metric": new_metric, "checks": checks,
            "reason": "; ".join(reasons) if reasons else "every check passed"}


# --- registry and deployment ---------------------------------------------------------------


def _snapshot_record(plan: UpdatePlan) -> Snapshot:
    path = plan.corpus[-1]
    return Snapshot(plan.snapshot_id, path, plan.corpus, plan.new_docs + plan.old_docs, False,
                    0, 0, 0, 0, 0, 0, 0, 0)


def register_challenger(cfg: CtxvecConfig, ws: Workspace, plan: UpdatePlan,
                        trained: TrainedModel, report: EvalReport) -> RegisteredModel:
    from ctxvec.registry.store import register_model, set_version_tags, version_with_tag

    found = version_with_tag(ws, plan.name, UPDATE_KEY_TAG, plan.key)
    if found is not None:
        log.info("update: version %s is this update's challenger already", found.version)
        return RegisteredModel(plan.name, found.version, found.run_id or "",
                               f"models:/{plan.name}/{found.version}")
    reg = register_model(cfg, ws, _snapshot_record(plan), None, trained, report)
    set_version_tags(ws, plan.name, reg.version, {
        UPDATE_KEY_TAG: plan.key, "continual.new_docs": str(plan.new_docs),
        "continual.parent_snapshot": plan.parent_snapshot,
        "continual.regularizer": cfg.continual.regularizer,
        "continual.replay_ratio": f"{cfg.continual.replay_ratio:g}",
    })
    return reg


def record_decision(ws: Workspace, reg: RegisteredModel, champion: dict[str, float],
                    decision: dict[str, Any]) -> None:
    from ctxvec.registry.store import set_version_tags

    tags = {"gate.decision": "promote" if decision["promote"] else "rejected",
            "gate.reason": decision["reason"][:5000],
            "gate.checks": json.dumps(decision["checks"])[:5000]}
    tags |= {f"gate.champion.{k}": f"{v:.6g}" for k, v in champion.items()}
    set_version_tags(ws, reg.name, reg.version, tags)
    log.log(logging.INFO if decision["promote"] else logging.WARNING,
            "update: gate %s version %s: %s", "promotes" if decision["promote"] else "rejects",
            reg.version, decision["reason"])


def deploy(cfg: CtxvecConfig, ws: Workspace, plan: UpdatePlan, trained: TrainedModel,
           reg: RegisteredModel) -> dict[str, Any]:
    """Embed, index, link, switch: the alias moves last, and only to a complete pair."""
    from ctxvec.artifacts import Embeddings, IndexArtifact
    from ctxvec.embed.corpus import run_embed
    from ctxvec.index.build import run_index
    from ctxvec.registry.store import alias_version, attach_index, get_version, promote

    info = get_version(ws, f"models:/{reg.name}/{reg.version}")
    index_uri = info.tags.get("index_uri")
    m = ws.stage_manifest(index_uri) if index_uri else None
    if m is not None:
        log.info("update: version %s has its index already (%s)", reg.version, index_uri)
        idx = IndexArtifact(index_uri, m["factory"], m["count"], m["dim"], m["recall_at_10"],
                            reg.version)
    else:
        emb_dir = ws.embeddings / f"v{reg.version}"
        if (emb_dir / "manifest.json").is_file() and \
                read_json(emb_dir / "manifest.json").get("snapshot") == plan.snapshot_id:
            m = read_json(emb_dir / "manifest.json")
            emb = Embeddings(str(emb_dir), m["rows"], m["docs"], m["dim"], reg.version)
            log.info("update: version %s's embeddings exist already", reg.version)
        else:
            emb = run_embed(cfg, ws, _snapshot_record(plan), trained.model_dir, reg.version)
        crash_point("after-embed")
        idx = run_index(cfg, ws, emb)
        attach_index(ws, reg.name, reg.version, idx)
    crash_point("during-switch")
    previous = alias_version(ws, reg.name, "champion")
    if previous != reg.version:
        promote(ws, reg.name, reg.version, "champion")
    return {"index": idx.to_dict(), "previous_champion": previous}


def run_update(cfg: CtxvecConfig, ws: Workspace) -> dict[str, Any]:
    """Every step in order (what ``ctxvec update`` and the continual flow run)."""
    plan = plan_update(cfg, ws)
    if plan.status != "ready":
        return {"status": plan.status, "plan": plan.to_dict()}
    domains = split_domains(cfg, plan)
    trained = train_challenger(cfg, ws, plan, domains)
    champion, report = evaluate_pair(cfg, ws, plan, domains, trained)
    reg = register_challenger(cfg, ws, plan, trained, report)
    decision = decide(cfg.continual.gate, champion, report.metrics)
    record_decision(ws, reg, champion, decision)
    return finish_update(cfg, ws, plan, trained, reg, decision, champion, report)


def finish_update(cfg, ws, plan, trained, reg, decision, champion, report) -> dict[str, Any]:
    out = {"status": "promoted" if decision["promote"] else "rejected", "plan": plan.to_dict(),
           "version": reg.version, "gate": decision, "champion_metrics": champion,
           "challenger_metrics": report.metrics}
    if not decision["promote"]:
        return out
    out |= deploy(cfg, ws, plan, trained, reg)
    try:
        from ctxvec.continual.drift import drift_report

        out["drift"] = drift_report(ws, plan.name, plan.parent_version, reg.version)
    except Exception as e:  # the update is complete; a drift report is a bonus
        log.warning("update: drift report failed: %s", e)
    return out
