"""``ctxvec pretrain`` and ``ctxvec finetune``: train, evaluate and register one model, without
the embedding and index stages of ``ctxvec run``. Both work under ``torchrun`` too."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ctxvec.cli._common import (
    JsonOpt,
    UserError,
    command,
    dump,
    format_metrics,
    load_recipe,
    set_opt,
    workspace,
)

if TYPE_CHECKING:
    from ctxvec.config import CtxvecConfig


# --- stage orchestration: to be replaced by ctxvec.stages.train_and_register ------------------


def train_and_register(cfg: CtxvecConfig, need_pack: bool) -> dict | None:
    """ingest (if the recipe reads the corpus) -> tokenizer -> pack -> train -> evaluate ->
    register; each a run_* call, as the Prefect flow makes them. None on torchrun ranks but 0."""
    # lazy: keep start-up fast (torch, transformers, mlflow)
    from ctxvec.evaluate.run import run_evaluate
    from ctxvec.ingest.snapshot import load_snapshot, run_ingest
    from ctxvec.registry.store import register_model
    from ctxvec.tokenizer.packing import run_pack
    from ctxvec.tokenizer.trainer import run_tokenizer
    from ctxvec.train import distributed
    from ctxvec.train.run import run_train

    ws = workspace().ensure()
    world = distributed.setup(cfg.train.device)  # under torchrun: join the process group
    objectives = cfg.train.objectives
    needs_corpus = need_pack or cfg.model.init == "scratch" or any(
        o.data.source == "corpus" for o in objectives)
    snap = tok = packed = None
    if world.main:  # the data stages run once; the other ranks receive their results
        if needs_corpus:
            snap = run_ingest(cfg, ws) if cfg.ingest.sources else load_snapshot(ws)
        if snap or cfg.tokenizer.source == "model":
            tok = run_tokenizer(cfg, ws, snap)
        packed = run_pack(cfg, ws, snap, tok) if need_pack else None
    snap, tok, packed = distributed.broadcast((snap, tok, packed))
    trained = run_train(cfg, ws, snap, tok, packed)
    if not world.main:
        return None
    report = run_evaluate(cfg, ws, trained)
    reg = register_model(cfg, ws, snap, tok, trained, report)
    return {
        "model": reg.uri, "model_dir": trained.model_dir, "version": reg.version,
        "run_dir": trained.run_dir, "mlflow_run_id": reg.run_id, "steps": trained.steps,
        "tokens_seen": trained.tokens_seen, "final_loss": trained.final_loss,
        "train_metrics": trained.metrics, "metrics": report.metrics, "skipped": report.skipped,
    }


# --- commands -------------------------------------------------------------------------------


def _train_and_report(cfg: CtxvecConfig, as_json: bool) -> str | None:
    out = train_and_register(cfg, any(o.name == "mlm" for o in cfg.train.objectives))
    if out is None:  # a torchrun worker other than rank 0: rank 0 reports
        return None
    if as_json:
        return dump(out)
    return (f"model   {out['model']}  ({out['model_dir']})\n"
            f"train   {out['steps']} steps, {out['tokens_seen']} tokens, final loss "
            f"{out['final_loss']}\nmetrics {format_metrics(out['metrics'])}")


@command
def pretrain(
    config: Annotated[Path, typer.Option("--config", "-c", help="Recipe YAML, e.g. "
                                         "configs/scratch-mini.yaml.")],
    set_: Annotated[list[str] | None, set_opt("train.steps=50")] = None,
    as_json: JsonOpt = False,
) -> str | None:
    """Pretrain (masked LM, alone or with other objectives) on the corpus: ingest, tokenizer,
    pack, train, evaluate, and register the model in MLflow."""
    from ctxvec.ingest.corpus import committed_snapshots  # lazy: keep start-up fast (pyarrow)

    cfg = load_recipe(config, set_)
    if not cfg.ingest.sources and not committed_snapshots(workspace()):
        raise UserError("the recipe has no ingest.sources and the workspace no corpus")
    return _train_and_report(cfg, as_json)


@command
def finetune(
    config: Annotated[Path, typer.Option("--config", "-c", help="Recipe YAML, e.g. "
                                         "configs/finetune-stsb.yaml.")],
    set_: Annotated[list[str] | None, set_opt("train.steps=50")] = None,
    as_json: JsonOpt = False,
) -> str | None:
    """Fine-tune a pretrained encoder (model.init: minilm, a folder or models:/...) with task
    objectives, early stopping on a dev metric, and register it in MLflow."""
    cfg = load_recipe(config, set_)
    if cfg.model.init == "scratch":
        raise UserError("finetune starts from a pretrained model: set model.init (e.g. minilm); "
                        "to train from scratch use `ctxvec pretrain`")
    return _train_and_report(cfg, as_json)
