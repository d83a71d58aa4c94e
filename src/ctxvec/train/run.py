"""``run_train``: build or load an encoder, gather each objective's data, run the loop, save.

The run folder is named after the recipe and its inputs (config, snapshot, tokenizer), so running
the same recipe on the same data again resumes an interrupted run from its last checkpoint, or
reuses a finished one, instead of starting over; ``train.resume=false`` always starts afresh.

The setup every training shares (seed and threads, the model on its device, one task per
objective, saving the model, reading a finished run back) is here as small functions, so the
continual update (``ctxvec.continual.train``) trains through the same steps with its own data.

Training never resolves a registry reference itself: ``model.init`` may name one
(``models:/...``), and whoever calls ``run_train`` above the registry layer (``ctxvec.stages``)
passes the downloaded folder as ``init_dir``. The run key and the recorded parent still name
the reference the recipe gave.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctxvec.artifacts import MinedData, PackedData, Snapshot, TokenizerArtifact, TrainedModel
from ctxvec.config import ConfigError, CtxvecConfig
from ctxvec.model.bert import build_model
from ctxvec.model.encoder import Encoder, EncoderSettings, pick_device, save_encoder
from ctxvec.tokenizer.packing import read_packed
from ctxvec.train import distributed
from ctxvec.train.anchor import anchor_parts
from ctxvec.train.datasets import Sampler, load_examples, split_heldout
from ctxvec.train.loop import Evaluate, train
from ctxvec.train.multitask import MultiTask, Task
from ctxvec.train.objectives import build_objective
from ctxvec.train.objectives.mlm import MaskedLM
from ctxvec.train.objectives.sentences import SentenceView
from ctxvec.train.precision import train_precision
from ctxvec.train.sts import evaluate_sts, read_sts
from ctxvec.workspace import Workspace, read_json, sha256_text, write_manifest

log = logging.getLogger(__name__)


def run_key(cfg: CtxvecConfig, snapshot: Snapshot | None, tok: TokenizerArtifact | None,
            mined: MinedData | None = None) -> str:
    what: dict[str, Any] = {
        "model": cfg.model.model_dump(mode="json"),
        # how a run is executed (where, how many processes, threads) is not what it trains
        "train": cfg.train.model_dump(mode="json", exclude={"resume", "device", "threads",
                                                            "nproc_per_node"}),
        "snapshot": snapshot.snapshot_id if snapshot else None,
        "tokenizer": tok.sha256 if tok else None,
    }
    if mined is not None:  # other mined examples are other training (absent: keys unchanged)
        what["mined"] = mined.key
    return sha256_text(json.dumps(what, sort_keys=True))[:10]


# --- the setup every training shares -------------------------------------------------------


@dataclass
class Setup:
    """A model ready to train: its tokenizer, encoder settings, device, and the reference it
    starts from (None from scratch)."""

    tokenizer: Any
    model: torch.nn.Module
    settings: EncoderSettings
    device: torch.device
    parent: str | None


def seed_and_threads(tcfg) -> None:
    torch.manual_seed(tcfg.seed)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)


def wants_mlm(cfg: CtxvecConfig) -> bool:
    return any(o.name == "mlm" for o in cfg.train.objectives)


def prepare_model(cfg: CtxvecConfig, ws: Workspace, tokenizer_art: TokenizerArtifact | None,
                  init_dir: str | Path | None = None, device: str | None = None) -> Setup:
    """Build (scratch) or load (``init_dir``, else ``model.init``) the model, with an MLM head
    when an objective is MLM, on ``device`` (default: this rank's ``train.device``)."""
    tokenizer, model, settings, parent = build_model(
        cfg, tokenizer_art, mlm=wants_mlm(cfg),
        init_dir=Path(init_dir) if init_dir is not None else None)
    dev = pick_device(device or distributed.local_device(cfg.train.device))
    model.to(dev)
    if cfg.train.seq_len > model.config.max_position_embeddings:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} exceeds the model's "
                          f"{model.config.max_position_embeddings} positions")
    return Setup(tokenizer, model, settings, dev, parent)


def objective_task(setup: Setup, ocfg, objective, examples, index: int, tcfg,
                   world: distributed.World | None = None) -> Task:
    """One objective's task: its head attached to the model, its batch size, its sampler (this
    rank's share under DDP)."""
    world = world or distributed.World()
    if getattr(objective, "attach", None):
        objective.attach(setup.model.config.hidden_size, setup.device)
    if getattr(objective, "bind", None):  # a head built from the model itself (tsdae's decoder)
        objective.bind(setup.model, setup.device)
    bs = ocfg.batch_size or tcfg.batch_size
    sampler = Sampler(len(examples), tcfg.seed + index, rank=world.rank, world=world.size)
    log.info("train: objective %s, %d examples, batch %d, weight %g",
             ocfg.name, len(examples), bs, ocfg.weight)
    return Task(objective, examples, ocfg.weight, bs, sampler)


def anchored(setup: Setup, tcfg, tasks: list[Task], penalties: list | None = None) -> MultiTask:
    """The tasks with ``train.anchor``'s pull toward the model as it is now (its start)."""
    view = SentenceView(setup.tokenizer, tcfg.seq_len, setup.settings.pooling)
    extra, anchors = anchor_parts(tcfg.anchor, setup.model, view, tasks)
    if tcfg.anchor.kind != "none":
        log.info("train: anchored to the starting model by %s (weight %g)", tcfg.anchor.kind,
                 tcfg.anchor.strength)
    return MultiTask(tasks + extra, list(penalties or []) + anchors)


def save_model(ws: Workspace, run_dir: Path, setup: Setup) -> None:
    """The trained encoder, tokenizer and settings as ``run_dir/model`` (atomically)."""
    with ws.stage_dir(run_dir / "model") as tmp:
        setup.model.to("cpu")
        save_encoder(setup.model, setup.tokenizer, setup.settings, tmp)


def finished_record(run_dir: Path) -> TrainedModel:
    """The record of a finished run, read back from its manifest."""
    m = read_json(run_dir / "manifest.json")
    return TrainedModel(str(run_dir), str(run_dir / "model"), m["steps"], m["tokens_seen"],
                        m["final_loss"], m.get("eval_loss"), m["parent"], m.get("metrics", {}))


def _mlm_eval(objective: MaskedLM, rows, batch_size: int, seed: int) -> Evaluate:
    def evaluate(model) -> dict[str, float]:
        gen = torch.Generator().manual_seed(seed + 1_000_003)  # the same masks every time
        losses = [float(objective.loss(model, objective.collate(rows[i : i + batch_size]), gen))
                  for i in range(0, len(rows), batch_size)]
        loss = sum(losses) / len(losses)
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}

    return evaluate


def _sts_eval(path: str, tokenizer, settings, batch_size: int, precision: str) -> Evaluate:
    pairs = read_sts(path)

    def evaluate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        # in the precision training computes in (the weights stay fp32: autocast only)
        enc = Encoder(model.base_model, tokenizer, settings, device,
                      train_precision(precision, device))
        return {"sts_spearman": evaluate_sts(enc, pairs, batch_size)["spearman"]}

    return evaluate


def _combine(evals: list[Evaluate]) -> Evaluate | None:
    if not evals:
        return None

    def evaluate(model) -> dict[str, float]:
        out: dict[str, float] = {}
        for e in evals:
            out.update(e(model))
        return out

    return evaluate


def train_logged(run_dir: Path, model, tasks: MultiTask, tcfg, evaluate: Evaluate | None = None):
    """Run the loop with checkpoints in ``run_dir`` and every logged row appended to
    ``run_dir/metrics.jsonl``; None (and an empty metrics file) when there are no steps."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = run_dir / "metrics.jsonl"
    if not (tcfg.steps > 0 or tcfg.epochs):
        metrics_file.touch()
        return None

    def on_log(row: dict) -> None:
        with open(metrics_file, "a") as f:
            f.write(json.dumps(row) + "\n")

    return train(model, tasks, tcfg, evaluate=evaluate, run_dir=run_dir, on_log=on_log)


# --- the recipe's training -------------------------------------------------------------------


def _run_dir(cfg: CtxvecConfig, ws: Workspace, snapshot: Snapshot | None,
             tokenizer_art: TokenizerArtifact | None, mined: MinedData | None = None) -> Path:
    key = run_key(cfg, snapshot, tokenizer_art, mined)
    return ws.runs / (f"{cfg.name}-{key}" if cfg.train.resume
                      else f"{cfg.name}-{key}-{time.strftime('%Y%m%dT%H%M%S')}")


def finished_run(cfg: CtxvecConfig, ws: Workspace, snapshot: Snapshot | None,
                 tokenizer_art: TokenizerArtifact | None,
                 mined: MinedData | None = None) -> TrainedModel | None:
    """The finished run of this recipe on this data, when ``train.resume`` lets it be reused:
    checked before launching training processes that would only find it again."""
    run_dir = _run_dir(cfg, ws, snapshot, tokenizer_art, mined)
    if not (cfg.train.resume and (run_dir / "manifest.json").is_file()):
        return None
    log.info("train: %s already trained this recipe on this data; reusing it "
             "(train.resume=false trains again)", run_dir.name)
    return finished_record(run_dir)


def _recipe_examples(ocfg, objective, snapshot: Snapshot | None, packed: PackedData | None,
                     tcfg, evals: list[Evaluate], mined: MinedData | None = None):
    """An objective's examples as the recipe names them: MLM reads the packed sequences (and
    holds some out for ``evals``), the others their data source (``mined``: the mine stage's
    examples)."""
    if ocfg.name != "mlm":
        return load_examples(ocfg, snapshot.corpus if snapshot else None, mined)
    if packed is None:
        raise ConfigError("an mlm objective needs packed corpus data (run the pack "
                          "stage: `ctxvec pretrain` or `ctxvec run` do)")
    if packed.mode == "pair":
        raise ConfigError("pack.mode=pair makes sentence pairs; mlm trains on concat or doc")
    rows, heldout = split_heldout(read_packed(packed.path), tcfg.eval_fraction, tcfg.seed)
    if len(heldout):
        evals.append(_mlm_eval(objective, heldout, tcfg.batch_size, tcfg.seed))
    return rows


def run_train(
    cfg: CtxvecConfig,
    ws: Workspace,
    snapshot: Snapshot | None,
    tokenizer_art: TokenizerArtifact | None,
    packed: PackedData | None,
    init_dir: str | Path | None = None,
    mined: MinedData | None = None,
) -> TrainedModel:
    """Train the recipe on the given inputs. ``init_dir``: the local folder of ``model.init``
    when that names a registry version (resolved by the caller); ``mined``: the mine stage's
    record, for objectives with ``data.source: mined``."""
    started = time.time()
    tcfg = cfg.train
    seed_and_threads(tcfg)
    done = finished_run(cfg, ws, snapshot, tokenizer_art, mined)
    if done is not None:
        return done
    world = distributed.setup(tcfg.device)
    # rank 0's folder for every rank: with train.resume=false its name holds a timestamp
    run_dir = distributed.broadcast(_run_dir(cfg, ws, snapshot, tokenizer_art, mined))
    setup = prepare_model(cfg, ws, tokenizer_art, init_dir)
    n_params = sum(p.numel() for p in setup.model.parameters())
    log.info("train: %s, %.1fM parameters, on %s", cfg.model.init, n_params / 1e6, setup.device)

    # data: one task per objective; MLM reads the packed sequences and holds some out
    tasks, evals = [], []
    for i, ocfg in enumerate(tcfg.objectives):
        objective = build_objective(ocfg, setup.tokenizer, setup.settings, tcfg.seq_len)
        examples = _recipe_examples(ocfg, objective, snapshot, packed, tcfg, evals, mined)
        tasks.append(objective_task(setup, ocfg, objective, examples, i, tcfg, world))
    if cfg.evaluate.sts and Path(cfg.evaluate.sts).is_file() and (
            tcfg.eval_every or tcfg.early_stopping):
        evals.append(_sts_eval(cfg.evaluate.sts, setup.tokenizer, setup.settings,
                               cfg.evaluate.batch_size, tcfg.precision))
    result = train_logged(run_dir, setup.model, anchored(setup, tcfg, tasks), tcfg,
                          _combine(evals))
    if result is None:
        log.info("train: train.steps=0, keeping %s's weights as they are", cfg.model.init)
    if not world.main:  # rank 0 saves; the others are done once training is
        return TrainedModel(str(run_dir), str(run_dir / "model"), result.steps if result else 0,
                            result.tokens_seen if result else 0, None, None, setup.parent)

    save_model(ws, run_dir, setup)
    metrics = result.metrics if result else {}
    summary = {
        "steps": result.steps if result else 0,
        "tokens_seen": result.tokens_seen if result else 0,
        "final_loss": result.final_loss if result else None,
        "eval_loss": metrics.get("eval_loss"),
        "parent": setup.parent,
        "metrics": metrics,
    }
    write_manifest(
        run_dir, "train", started, **summary,
        snapshot=snapshot.snapshot_id if snapshot else None,
        tokenizer_sha256=tokenizer_art.sha256 if tokenizer_art else None,
        packed=packed.path if packed else None, mined=mined.path if mined else None,
        mined_counts=mined.counts if mined else None,
        parameters=n_params, device=str(setup.device),
        precision=result.precision if result else None,
        stopped_early=result.stopped_early if result else False,
        resumed_from=result.resumed_from if result else None, world_size=world.size,
        config={"model": cfg.model.model_dump(mode="json"),
                "train": tcfg.model_dump(mode="json")},
    )
    return TrainedModel(str(run_dir), str(run_dir / "model"), **summary)
