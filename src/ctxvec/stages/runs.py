"""What callers run: the whole pipeline, training up to a registered version, embedding with any
model, and the one ``deploy`` (embed -> index -> link -> promote) the continual update and
``ctxvec embed --index`` share.

Each takes a ``call`` that runs one stage: ``run_stage`` (in this process, as the CLI's
pretrain, finetune and embed do) or the Prefect task wrapping the stage (``flows/``), so the
same graph runs either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxvec.artifacts import Embeddings, IndexArtifact, Snapshot
from ctxvec.config import CtxvecConfig
from ctxvec.faults import crash_point
from ctxvec.index.build import run_index
from ctxvec.ingest.snapshot import load_snapshot
from ctxvec.refs import ModelRef
from ctxvec.serve.resolve import embedding_label
from ctxvec.stages import versions
from ctxvec.stages.embedding import embed_once, model_identity
from ctxvec.stages.graph import Call, Records, execute, run_stage
from ctxvec.stages.pipeline import PIPELINE, TRAIN, plan
from ctxvec.train import distributed
from ctxvec.workspace import Workspace, read_json


def run_pipeline(cfg: CtxvecConfig, ws: Workspace, call: Call = run_stage) -> dict[str, Any]:
    """Every stage of the recipe; -> the run's summary (what ``ctxvec run`` prints)."""
    return pipeline_summary(cfg, ws, execute(cfg, ws, plan(cfg, PIPELINE), call))


def pipeline_summary(cfg: CtxvecConfig, ws: Workspace, r: Records) -> dict[str, Any]:
    reg, promotion = r["register"], r["promote"]
    return {
        "workspace": ws.home,
        "snapshot": r["ingest"].to_dict(),
        "tokenizer": r["tokenizer"].to_dict(),
        "pack": r["pack"].to_dict() if r.get("pack") else None,
        "mine": r["mine"].to_dict() if r.get("mine") else None,
        "train": r["train"].to_dict(),
        "evaluate": r["evaluate"].to_dict(),
        "model": reg.to_dict(),
        "embeddings": r["embed"].to_dict(),
        "index": r["index"].to_dict(),
        "champion": promotion["champion"],  # after the run: the new version or the one kept
        "previous_champion": promotion["previous_champion"],  # the one replaced, if any
        "promotion": promotion,  # the promote stage's decision, its reason and checks
        # the gate's comparison, as the continual update reports its own (None: none was made)
        "gate": ({"promote": promotion["decision"] == "promote", "checks": promotion["checks"],
                  "reason": "; ".join(filter(None, [promotion["reason"],
                                                    promotion.get("hint")]))}
                 if promotion.get("checks") else None),
        "sample_query": {"text": cfg.query.sample, "hits": r.get("sample-query") or []},
    }


def train_and_register(cfg: CtxvecConfig, ws: Workspace,
                       call: Call = run_stage) -> dict[str, Any] | None:
    """The data stages the recipe needs, then train, evaluate and register (``ctxvec pretrain``
    and ``finetune``). Under ``torchrun -m ctxvec.cli ...`` the data stages run on rank 0 alone
    and their records go to every rank, every rank trains, and rank 0 evaluates and registers;
    the other ranks return None."""
    world = distributed.setup(cfg.train.device)  # under torchrun: join the process group
    stages = plan(cfg, TRAIN)
    at = [s.name for s in stages].index("train")
    with ws.lock():  # one hold for the three parts (rank 0's, under torchrun)
        records = execute(cfg, ws, stages[:at], call) if world.main else {}
        records = distributed.broadcast(records)
        records = execute(cfg, ws, stages[at:at + 1], call, records)
        if not world.main:
            return None
        records = execute(cfg, ws, stages[at + 1:], call, records)
    trained, report, reg = records["train"], records["evaluate"], records["register"]
    return {
        "model": reg.uri, "model_dir": trained.model_dir, "version": reg.version,
        "run_dir": trained.run_dir, "mlflow_run_id": reg.run_id, "steps": trained.steps,
        "tokens_seen": trained.tokens_seen, "final_loss": trained.final_loss,
        "train_metrics": trained.metrics, "metrics": report.metrics, "skipped": report.skipped,
    }


# --- embed -> index -> link -> promote -----------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    embeddings: Embeddings | None  # None when the version's linked index was reused
    index: IndexArtifact
    previous_champion: str | None


def _linked_index(ws: Workspace, name: str, version: str) -> IndexArtifact | None:
    """The index already linked to the version, if its folder is complete."""
    uri = versions.linked_index_uri(ws, name, version)
    m = ws.stage_manifest(uri) if uri else None
    if m is None:
        return None
    return IndexArtifact(uri, m["factory"], m["count"], m["dim"], m["recall_at_10"], version)


def _finished_embeddings(ws: Workspace, version: str, snap: Snapshot) -> Embeddings | None:
    """The version's embeddings of this snapshot's corpus, if a run finished them."""
    folder = ws.embeddings / f"v{version}"
    if not (folder / "manifest.json").is_file():
        return None
    m = read_json(folder / "manifest.json")
    if m.get("snapshot") != snap.snapshot_id:
        return None
    return Embeddings(str(folder), m["rows"], m["docs"], m["dim"], version)


def _identity(ws: Workspace, model_dir: str | Path, version: str,
              name: str | None) -> dict[str, Any]:
    """The model's identity for the embed request record: a registry version with its run."""
    run_id = (versions.version_info(ws, ModelRef.registered(name, version=version)).run_id
              if name else None)
    return model_identity(version, model_dir, name, run_id)


def deploy(cfg: CtxvecConfig, ws: Workspace, snap: Snapshot, model_dir: str | Path,
           version: str, name: str | None = None, promote: bool = False,
           reuse: bool = False, model: dict[str, Any] | None = None) -> Deployment:
    """Embed the corpus with a model, build the index, link it to the registry version ``name``
    / ``version`` (when ``name`` is given), and with ``promote`` move ``champion`` to it: the
    alias moves last, and only to a complete pair. Embeddings of the same model, corpus and
    settings are reused (``ctxvec.stages.embedding``); with ``reuse``, work an interrupted run
    finished (the linked index, this snapshot's embeddings) is not done again either."""
    idx = _linked_index(ws, name, version) if reuse and name else None
    emb = None
    if idx is None:
        emb = _finished_embeddings(ws, version, snap) if reuse else None
        emb = emb or embed_once(cfg, ws, snap, model_dir, version,
                                model or _identity(ws, model_dir, version, name))
        crash_point("after-embed")
        idx = run_index(cfg, ws, emb)
        if name:
            versions.link_index(ws, name, version, idx)
    previous = None
    if promote and name:
        crash_point("during-switch")
        previous = versions.move_champion(ws, name, version)
    return Deployment(emb, idx, previous)


def embed_model(cfg: CtxvecConfig, ws: Workspace, model: str, snapshot_id: str | None = None,
                build_index: bool = False) -> dict[str, Any]:
    """Embed the corpus as of ``snapshot_id`` (default: the newest) with any model; with
    ``build_index``, index it and link the index to a registry version (``ctxvec embed``)."""
    with ws.lock():
        return _embed_model(cfg, ws, model, snapshot_id, build_index)


def _embed_model(cfg: CtxvecConfig, ws: Workspace, model: str, snapshot_id: str | None,
                 build_index: bool) -> dict[str, Any]:
    snap = load_snapshot(ws, snapshot_id)
    info = None
    if versions.is_registry_ref(model):
        info = versions.version_info(ws, model)
        folder, name = versions.local_model_dir(ws, info), info.name
        version = info.version
    else:
        folder, name = versions.local_model_dir(ws, model), None
        version = embedding_label(ws, model, folder)
    identity = model_identity(version, folder, name, info.run_id if info else None)
    if build_index:
        dep = deploy(cfg, ws, snap, folder, version, name=name, model=identity)
        emb, idx = dep.embeddings, dep.index
    else:
        emb, idx = embed_once(cfg, ws, snap, folder, version, identity), None
    assert emb is not None
    return {"model": model, "model_version": version, "snapshot": snap.snapshot_id,
            "embeddings": emb.to_dict(), "index": idx.to_dict() if idx else None}
