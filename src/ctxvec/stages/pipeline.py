"""The pipeline's stages, declared once, and the decisions of which of them a run needs.

ingest -> tokenizer -> pack -> mine -> train -> evaluate -> register -> embed -> index -> promote
-> sample-query

``plan(cfg, target)`` is the one place that decides which stages a run takes: ``pipeline`` (what
``ctxvec run`` and the ``ctxvec-pipeline`` flow run) or ``train`` (``ctxvec pretrain`` and
``finetune``: up to register). Packing runs when an objective is MLM (``needs_pack``); the
corpus is read when the pipeline embeds it, when packing needs it, when a scratch model needs a
tokenizer trained on it, or when an objective reads its sentences (``needs_corpus``); the
tokenizer stage runs when there is a corpus to train it on or the recipe takes the model's own;
the mine stage runs when an objective trains on mined examples (``data.source: mined``) or the
label-free evaluation is on (``evaluate.pseudo``), and hands its record to train and evaluate.

The run functions here are thin: each calls one ``run_<stage>`` (or the registry, through
``ctxvec.stages.versions``) and returns its record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctxvec.adapt.mine import run_mine
from ctxvec.artifacts import (
    Embeddings,
    EvalReport,
    IndexArtifact,
    MinedData,
    PackedData,
    RegisteredModel,
    Snapshot,
    TokenizerArtifact,
    TrainedModel,
)
from ctxvec.config import CtxvecConfig
from ctxvec.evaluate.run import run_evaluate
from ctxvec.index.build import run_index
from ctxvec.ingest.snapshot import load_snapshot, run_ingest
from ctxvec.refs import ModelRef
from ctxvec.serve.search import Searcher
from ctxvec.stages import keys, versions
from ctxvec.stages.embedding import embed_once, model_identity
from ctxvec.stages.graph import Key, OnLine, Stage
from ctxvec.stages.promotion import promote_gated
from ctxvec.tokenizer.packing import run_pack
from ctxvec.tokenizer.trainer import run_tokenizer
from ctxvec.train.launch import train_with_launch
from ctxvec.train.run import finished_run, wants_mlm
from ctxvec.workspace import Workspace

PIPELINE = "pipeline"  # every stage: ctxvec run, the ctxvec-pipeline flow
TRAIN = "train"  # up to register: ctxvec pretrain / finetune
# A Prefect concurrency limit on this tag (`prefect concurrency-limit create gpu-train 1`) keeps
# two trainings, from any flows and deployments, off one GPU at once (infra/README.md).
GPU_TRAIN_TAG = "gpu-train"


# --- the decisions ------------------------------------------------------------------------------


def needs_pack(cfg: CtxvecConfig) -> bool:
    """MLM trains on packed token sequences; no other objective reads them."""
    return wants_mlm(cfg)


def needs_corpus(cfg: CtxvecConfig, target: str) -> bool:
    """Whether the run reads the corpus (so ingest runs, or the newest snapshot is taken)."""
    return (target == PIPELINE or needs_pack(cfg) or cfg.model.init == "scratch"
            or cfg.wants_mined()
            or any(o.data.source == "corpus" for o in cfg.train.objectives))


def needs_tokenizer(cfg: CtxvecConfig, has_corpus: bool) -> bool:
    return has_corpus or cfg.tokenizer.source == "model"


# --- the run functions ------------------------------------------------------------------------


def ingest(cfg: CtxvecConfig, ws: Workspace) -> Snapshot:
    """Ingest the recipe's sources; a recipe without sources takes the workspace's corpus."""
    return run_ingest(cfg, ws) if cfg.ingest.sources else load_snapshot(ws)


def model_init_dir(cfg: CtxvecConfig, ws: Workspace) -> Path | None:
    """The local folder of a registry ``model.init`` (training gets folders, never references);
    None for scratch, minilm and folders, which the model layer resolves itself."""
    init = cfg.model.init
    if init == "scratch" or not versions.is_registry_ref(init):
        return None
    return versions.local_model_dir(ws, init)


def tokenizer(cfg: CtxvecConfig, ws: Workspace, snap: Snapshot | None) -> TokenizerArtifact:
    """Train the recipe's tokenizer on the corpus, or take the model's own: ``model.init``
    (minilm, a folder, a registry version downloaded here) is handed down as a folder."""
    model_dir = (versions.local_model_dir(ws, cfg.model.init)
                 if cfg.tokenizer.source == "model" else None)
    return run_tokenizer(cfg, ws, snap, model_dir=model_dir)


def mine(cfg: CtxvecConfig, ws: Workspace, snap: Snapshot | None) -> MinedData:
    """Mine the corpus for label-free training examples and held-out pseudo-queries; the
    starting model (``model.init``, a registry version downloaded here) is handed down as a
    folder when the encoder filters queries or mines negatives."""
    model_dir = None
    if cfg.model.init != "scratch" and cfg.adapt.uses_encoder():
        model_dir = versions.local_model_dir(ws, cfg.model.init)
    return run_mine(cfg, ws, snap, model_dir)


def train(cfg: CtxvecConfig, ws: Workspace, snap: Snapshot | None, tok: TokenizerArtifact | None,
          packed: PackedData | None, mined: MinedData | None = None,
          on_line: OnLine | None = None) -> TrainedModel:
    """Train in this process, or under torchrun when ``train.nproc_per_node`` > 1 (the ranks'
    output to ``on_line``). A registry ``model.init`` is downloaded here and handed down as a
    folder, unless a finished run of the same recipe on the same data makes that needless."""
    init_dir = None
    if cfg.model.init != "scratch" and versions.is_registry_ref(cfg.model.init):
        done = finished_run(cfg, ws, snap, tok, mined)
        if done is not None:
            return done
        init_dir = model_init_dir(cfg, ws)
    return train_with_launch(cfg, ws, snap, tok, packed, on_line=on_line, init_dir=init_dir,
                             mined=mined)


def register(cfg: CtxvecConfig, ws: Workspace, snap: Snapshot | None,
             tok: TokenizerArtifact | None, trained: TrainedModel,
             report: EvalReport) -> RegisteredModel:
    return versions.register(cfg, ws, snap, tok, trained, report)


def embed(cfg: CtxvecConfig, ws: Workspace, snap: Snapshot, trained: TrainedModel,
          reg: RegisteredModel) -> Embeddings:
    """The corpus embedded with the new version, recorded so that ``ctxvec embed`` of the same
    version and settings reuses it (``ctxvec.stages.embedding``)."""
    return embed_once(cfg, ws, snap, trained.model_dir, reg.version,
                      model_identity(reg.version, trained.model_dir, reg.name, reg.run_id))


def promote(cfg: CtxvecConfig, ws: Workspace, reg: RegisteredModel, idx: IndexArtifact,
            trained: TrainedModel, report: EvalReport,
            mined: MinedData | None = None) -> dict[str, Any]:
    """Link the version to its index; move ``champion`` to it as ``registry.promote`` decides
    (``gate``: only if it is no worse than the champion on this run's evaluation;
    ``ctxvec.stages.promotion``). -> the decision, the champion after it and the one replaced."""
    versions.link_index(ws, reg.name, reg.version, idx)
    return promote_gated(cfg, ws, reg, trained, report, mined)


def sample_query(cfg: CtxvecConfig, ws: Workspace) -> list[dict]:
    """The recipe's sample query against the champion: the version just promoted, or the one
    the gate kept."""
    if not cfg.query.sample:
        return []
    searcher = Searcher(ws, ModelRef.registered(cfg.registry.model_name, alias="champion"), cfg)
    return [h.to_dict() for h in searcher.search(cfg.query.sample, cfg.query.k)]


# --- the declared stages ------------------------------------------------------------------------

INGEST = Stage("ingest", ("ingest",), (), ingest, kind="io")
TOKENIZER = Stage("tokenizer", ("tokenizer", "model.max_position"), ("ingest",), tokenizer,
                  Key(skip=keys.no_model_tokenizer), returns=TokenizerArtifact)
PACK = Stage("pack", ("pack", "train.seq_len"), ("ingest", "tokenizer"), run_pack, Key(),
             returns=PackedData)
# keyed by the adapt section, the corpus and the starting model (an alias pinned to its version)
MINE = Stage("mine", ("adapt", "model.init", "train.device"), ("ingest",), mine,
             Key(extra=keys.parent_model), returns=MinedData)
TRAIN_STAGE = Stage("train", ("model", "train"), ("ingest", "tokenizer", "pack", "mine"), train,
                    Key(data=keys.train_data, extra=keys.parent_model,
                        skip=keys.no_fresh_training),
                    returns=TrainedModel, tags=(GPU_TRAIN_TAG,), streams=True)
EVALUATE = Stage("evaluate", ("evaluate",), ("train", "mine"), run_evaluate,
                 Key(data=keys.eval_data), returns=EvalReport)
# A new model (other weights, or another run) has another key, so it is always registered; the
# same model is registered once per registry (MLflow URIs) while that version exists.
REGISTER = Stage("register", ("registry",), ("ingest", "tokenizer", "train", "evaluate"),
                 register, Key(extra=keys.mlflow_uris), returns=RegisteredModel,
                 reusable=keys.version_registered, kind="io")
EMBED = Stage("embed", ("embed",), ("ingest", "train", "register"), embed, Key(),
              returns=Embeddings)
INDEX = Stage("index", ("index",), ("embed",), run_index, Key(), returns=IndexArtifact)
# not keyed: the champion it compares with may have moved since
PROMOTE = Stage("promote", ("registry",), ("register", "index", "train", "evaluate", "mine"),
                promote, kind="io")
SAMPLE_QUERY = Stage("sample-query", ("query",), (), sample_query)

STAGES: tuple[Stage, ...] = (INGEST, TOKENIZER, PACK, MINE, TRAIN_STAGE, EVALUATE, REGISTER,
                             EMBED, INDEX, PROMOTE, SAMPLE_QUERY)
BY_NAME = {s.name: s for s in STAGES}


def plan(cfg: CtxvecConfig, target: str = PIPELINE) -> tuple[Stage, ...]:
    """The stages a run of ``target`` takes, in order: the one place that decides whether a run
    ingests, trains a tokenizer, packs, and (for the pipeline) queries the new champion."""
    if target not in (PIPELINE, TRAIN):
        raise ValueError(f"unknown target {target!r}: {PIPELINE} or {TRAIN}")
    corpus = needs_corpus(cfg, target)
    wanted = {
        "ingest": corpus,
        "tokenizer": needs_tokenizer(cfg, corpus),
        "pack": needs_pack(cfg),
        "mine": cfg.wants_mined(),
        "train": True, "evaluate": True, "register": True,
        "embed": target == PIPELINE, "index": target == PIPELINE, "promote": target == PIPELINE,
        "sample-query": target == PIPELINE and cfg.registry.promote != "never",
    }
    return tuple(s for s in STAGES if wanted[s.name])
