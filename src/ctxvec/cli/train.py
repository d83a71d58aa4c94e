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


def _train_and_report(cfg: CtxvecConfig, as_json: bool) -> str | None:
    from ctxvec import stages  # lazy: keep start-up fast (torch, transformers, mlflow)

    out = stages.train_and_register(cfg, workspace().ensure())
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
