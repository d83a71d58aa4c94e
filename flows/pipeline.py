"""The ctxvec pipeline as a Prefect flow: one task per stage, each a thin call of ``run_<stage>``.

ingest -> tokenizer -> pack -> train -> evaluate -> register -> embed -> index -> promote
-> sample query

Run it with ``ctxvec run --config configs/tiny.yaml``, or with Prefect directly:
``python flows/pipeline.py configs/tiny.yaml`` or a deployment whose entrypoint is
``flows/pipeline.py:pipeline``. With no ``PREFECT_API_URL`` set, Prefect runs it against its local
ephemeral server; with one set, the same code reports to that server.

Stages whose inputs did not change are not run again: their results are cached in the workspace
(``<home>/prefect-results``), keyed on their config sections and upstream artifacts; see
``flows/caching.py`` for what each key holds and when a cached result is discarded. Ingest always
runs (new files may have landed); it is incremental by itself.
"""

from __future__ import annotations

import sys

from ctxvec_flows import caching  # installed with ctxvec, so found however this file is loaded
from prefect import Task, flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from ctxvec.artifacts import (
    Embeddings,
    EvalReport,
    IndexArtifact,
    PackedData,
    RegisteredModel,
    Snapshot,
    TokenizerArtifact,
    TrainedModel,
)
from ctxvec.config import CtxvecConfig, load_config
from ctxvec.embed.corpus import run_embed
from ctxvec.evaluate.run import run_evaluate
from ctxvec.index.build import run_index
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.registry.store import attach_index, promote, register_model
from ctxvec.serve.search import Searcher
from ctxvec.tokenizer.packing import run_pack
from ctxvec.tokenizer.trainer import run_tokenizer
from ctxvec.train.launch import train_with_launch
from ctxvec.workspace import Workspace

# Stages write atomically and are cheap to re-check, so a transient failure (a locked SQLite
# file, a busy disk) is retried; training is not: its failures are not transient.
_IO = {"retries": 2, "retry_delay_seconds": 2}
_COMPUTE = {"retries": 0}
# A Prefect concurrency limit on this tag (`prefect concurrency-limit create gpu-train 1`) keeps
# two trainings, from any flows and deployments, off one GPU at once (infra/README.md).
GPU_TRAIN_TAG = "gpu-train"


def _cached(policy: caching.StageCache) -> dict:
    return {"cache_policy": policy, "persist_result": True}


@task(name="ingest", cache_policy=NO_CACHE, **_IO)
def ingest_task(cfg: CtxvecConfig, ws: Workspace) -> Snapshot:
    return run_ingest(cfg, ws)


@task(name="tokenizer", **_COMPUTE, **_cached(caching.TOKENIZER))
def tokenizer_task(cfg: CtxvecConfig, ws: Workspace, snap: Snapshot) -> TokenizerArtifact:
    return run_tokenizer(cfg, ws, snap)


@task(name="pack", **_COMPUTE, **_cached(caching.PACK))
def pack_task(
    cfg: CtxvecConfig, ws: Workspace, snap: Snapshot, tok: TokenizerArtifact
) -> PackedData:
    return run_pack(cfg, ws, snap, tok)


@task(name="train", tags=[GPU_TRAIN_TAG], **_COMPUTE, **_cached(caching.TRAIN))
def train_task(
    cfg: CtxvecConfig, ws: Workspace, snap: Snapshot, tok: TokenizerArtifact, packed: PackedData
) -> TrainedModel:
    # train.nproc_per_node > 1 (or auto, on several GPUs): DDP ranks under torchrun, their
    # output streamed into this task's log; otherwise in this process, as before
    return train_with_launch(cfg, ws, snap, tok, packed, on_line=get_run_logger().info)


@task(name="evaluate", **_COMPUTE, **_cached(caching.EVALUATE))
def evaluate_task(cfg: CtxvecConfig, ws: Workspace, trained: TrainedModel) -> EvalReport:
    return run_evaluate(cfg, ws, trained)


@task(name="register", **_IO, **_cached(caching.REGISTER))
def register_task(
    cfg: CtxvecConfig,
    ws: Workspace,
    snap: Snapshot,
    tok: TokenizerArtifact,
    trained: TrainedModel,
    report: EvalReport,
) -> RegisteredModel:
    return register_model(cfg, ws, snap, tok, trained, report)


@task(name="embed", **_COMPUTE, **_cached(caching.EMBED))
def embed_task(
    cfg: CtxvecConfig, ws: Workspace, snap: Snapshot, trained: TrainedModel, reg: RegisteredModel
) -> Embeddings:
    return run_embed(cfg, ws, snap, trained.model_dir, reg.version)


@task(name="index", **_COMPUTE, **_cached(caching.INDEX))
def index_task(cfg: CtxvecConfig, ws: Workspace, emb: Embeddings) -> IndexArtifact:
    return run_index(cfg, ws, emb)


@task(name="promote", cache_policy=NO_CACHE, **_IO)
def promote_task(
    cfg: CtxvecConfig, ws: Workspace, reg: RegisteredModel, idx: IndexArtifact
) -> str | None:
    attach_index(ws, reg.name, reg.version, idx)
    if not cfg.registry.promote:
        return None
    return promote(ws, reg.name, reg.version, "champion")


@task(name="sample-query", cache_policy=NO_CACHE, **_COMPUTE)
def sample_query_task(cfg: CtxvecConfig, ws: Workspace) -> list[dict]:
    if not cfg.query.sample:
        return []
    searcher = Searcher(ws, f"models:/{cfg.registry.model_name}@champion", cfg)
    return [h.to_dict() for h in searcher.search(cfg.query.sample, cfg.query.k)]


def _in(ws: Workspace, stage: Task) -> Task:
    """The stage with its cached results kept in this run's workspace."""
    return stage.with_options(result_storage=caching.results_dir(ws))


@flow(name="ctxvec-pipeline")
def pipeline(config: str, overrides: list[str] | None = None, home: str | None = None) -> dict:
    """Run every stage of a recipe into the workspace ``home`` (default: ``$CTXVEC_HOME``)."""
    cfg = load_config(config, overrides)
    # a folder or a store URI (s3://bucket/prefix): Workspace.at tells them apart
    ws = (Workspace.at(home) if home else Workspace.from_env()).ensure()
    snap = ingest_task(cfg, ws)
    tok = _in(ws, tokenizer_task)(cfg, ws, snap)
    needs_pack = any(o.name == "mlm" for o in cfg.train.objectives) and (
        cfg.train.steps > 0 or cfg.train.epochs)
    packed = _in(ws, pack_task)(cfg, ws, snap, tok) if needs_pack else None
    trained = _in(ws, train_task)(cfg, ws, snap, tok, packed)
    report = _in(ws, evaluate_task)(cfg, ws, trained)
    reg = _in(ws, register_task)(cfg, ws, snap, tok, trained, report)
    emb = _in(ws, embed_task)(cfg, ws, snap, trained, reg)
    idx = _in(ws, index_task)(cfg, ws, emb)
    previous = promote_task(cfg, ws, reg, idx)
    hits = sample_query_task(cfg, ws) if cfg.registry.promote else []
    return {
        "workspace": ws.home,
        "snapshot": snap.to_dict(),
        "tokenizer": tok.to_dict(),
        "pack": packed.to_dict() if packed else None,
        "train": trained.to_dict(),
        "evaluate": report.to_dict(),
        "model": reg.to_dict(),
        "embeddings": emb.to_dict(),
        "index": idx.to_dict(),
        "champion": reg.version if cfg.registry.promote else previous,
        "previous_champion": previous,
        "sample_query": {"text": cfg.query.sample, "hits": hits},
    }


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python flows/pipeline.py CONFIG.yaml [key=value ...]")
    print(pipeline(sys.argv[1], sys.argv[2:]))
