"""The one stage graph: every stage of the pipeline and of the continual update, declared once.

A stage (``Stage``) is its name, the config sections it reads, the stages whose records it takes,
its run function ``run(cfg, ws, *records) -> record`` and its own idempotence key. The CLI runs
the graph in process (``run_stage``); the Prefect flows (``flows/``) wrap each declared stage in a
task whose cache key is the stage's key. Which stages a run takes is decided once, by ``plan``.

- ``plan(cfg, target)``: the pipeline stages a run of ``pipeline`` or ``train`` takes;
- ``run_pipeline``, ``train_and_register``, ``run_continual``: run a graph, with a ``call``;
- ``deploy``: embed -> index -> link -> promote; ``embed_model``: ``ctxvec embed``.
"""

from __future__ import annotations

from ctxvec.stages.continual import STAGES as CONTINUAL_STAGES
from ctxvec.stages.continual import run_continual
from ctxvec.stages.graph import Call, Key, Stage, execute, run_stage
from ctxvec.stages.pipeline import (
    BY_NAME,
    GPU_TRAIN_TAG,
    PIPELINE,
    STAGES,
    TRAIN,
    needs_corpus,
    needs_pack,
    needs_tokenizer,
    plan,
)
from ctxvec.stages.runs import (
    Deployment,
    deploy,
    embed_model,
    pipeline_summary,
    run_pipeline,
    train_and_register,
)

__all__ = ["BY_NAME", "CONTINUAL_STAGES", "GPU_TRAIN_TAG", "PIPELINE", "STAGES", "TRAIN", "Call",
           "Deployment", "Key", "Stage", "deploy", "embed_model", "execute", "needs_corpus",
           "needs_pack", "needs_tokenizer", "pipeline_summary", "plan", "run_continual",
           "run_pipeline", "run_stage", "train_and_register"]
