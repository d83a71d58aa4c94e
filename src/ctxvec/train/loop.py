"""The training loop: one plain function, read top to bottom.

Per step: freeze schedule -> learning rate -> forward/backward over ``grad_accum`` micro-batches
(bf16 autocast where ``train.precision`` resolves to bf16: ``ctxvec.train.precision``) ->
clip -> optimizer step -> log -> evaluate (early stopping) ->
checkpoint. Objectives and their data live in a ``MultiTask``; evaluation is a callable that
returns metrics; the loop knows nothing about what either computes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm

from ctxvec.config import EarlyStoppingConfig, TrainConfig
from ctxvec.train import distributed
from ctxvec.train.checkpoint import checkpoints, load_checkpoint, save_checkpoint
from ctxvec.train.multitask import MultiTask
from ctxvec.train.optim import (
    adamw,
    apply_freeze,
    encoder_layers,
    frozen_layers_at,
    lr_at,
    param_groups,
)
from ctxvec.train.precision import autocast, train_precision

log = logging.getLogger(__name__)

Evaluate = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class TrainResult:
    steps: int = 0
    tokens_seen: int = 0
    final_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    best: float | None = None  # the early-stopping metric's best value
    stopped_early: bool = False
    resumed_from: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    precision: str = "fp32"  # what train.precision resolved to on the training device


def total_steps(tcfg: TrainConfig, tasks: MultiTask) -> int:
    if tcfg.epochs is None:
        return tcfg.steps
    first = tasks.tasks[0]
    per_epoch = math.ceil(len(first.examples) / (first.batch_size * tcfg.grad_accum))
    return max(1, math.ceil(tcfg.epochs * per_epoch))


def flops_per_token(model, seq_len: int, head_share: float = 0.0) -> float:
    """Training FLOPs a token (Kaplan et al. 2020): 6 x the transformer layers' parameters,
    attention's 12 x layers x width x length, and the vocabulary projection for the share of
    tokens that need it (MLM: the masked ones; 0 for sentence objectives)."""
    _, layers = encoder_layers(model)
    n = sum(p.numel() for layer in layers for p in layer.parameters())
    d = model.config.hidden_size
    head = 6 * d * model.config.vocab_size * head_share
    return 6 * n + 12 * len(layers) * d * seq_len + head


def _improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate, scaled per parameter group (layer-wise decay, heads)."""
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_scale"]


def _finite(loss: torch.Tensor, step: int) -> float:
    """The loss as a number (a device sync); a diverged run stops here, not at the end."""
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} at step {step}; lower train.lr")
    return value


def _resume(run_dir: Path, model, heads: dict, opt: torch.optim.Optimizer,
            gen: torch.Generator, tasks: MultiTask, state: dict, total: int) -> int | None:
    """Load everything the newest checkpoint holds (weights, heads, optimizer, generator, the
    data's position and the loop's ``state``) -> its step; None when there is none."""
    ckpts = checkpoints(run_dir)
    if not ckpts:
        return None
    saved = load_checkpoint(ckpts[-1], model, heads, opt, gen)
    step = int(saved["step"])
    tasks.load_state(saved["data"])
    state.update({k: saved[k] for k in state if k in saved})
    log.info("train: resumed from %s (step %d of %d)", ckpts[-1].name, step, total)
    return step


def _ddp(model, heads: dict, tasks: MultiTask, device: torch.device) -> torch.nn.Module:
    """Under torchrun: DDP over the model and the heads, so that every gradient is averaged."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        distributed.LossModule(model, heads, tasks), find_unused_parameters=True,
        device_ids=[device.index] if device.type == "cuda" else None)


def _early_stop(metrics: dict[str, float], es: EarlyStoppingConfig, state: dict, model,
                run_dir: Path | None) -> bool:
    """Track the best value of the watched metric (its weights saved as ``best.safetensors``);
    True once it has not improved for ``patience`` evaluations."""
    if es.metric not in metrics:
        raise KeyError(f"train.early_stopping.metric={es.metric} is not among the "
                       f"evaluation's metrics {sorted(metrics)}")
    if _improved(metrics[es.metric], state["best"], es.mode):
        state["best"], state["bad_evals"] = metrics[es.metric], 0
        if run_dir is not None:
            save_model(model, str(run_dir / "best.safetensors"))
        return False
    state["bad_evals"] += 1
    return state["bad_evals"] >= es.patience


def train(
    model,
    tasks: MultiTask,
    tcfg: TrainConfig,
    *,
    evaluate: Evaluate | None = None,
    run_dir: Path | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place; with ``run_dir``, checkpoint there and resume from it."""
    # setup: heads on the model's device, one optimizer over both, the schedule's length
    result = TrainResult()
    world = distributed.current()
    device = next(model.parameters()).device
    heads = tasks.heads()
    for head in heads.values():
        head.to(device)
    trainable = list(model.parameters()) + [p for h in heads.values() for p in h.parameters()]
    opt = adamw(param_groups(model, list(heads.values()), tcfg), tcfg.lr, device)
    gen = torch.Generator().manual_seed(tcfg.seed)
    total = total_steps(tcfg, tasks)
    result.precision = train_precision(tcfg.precision, device, announce=world.main)
    bf16 = result.precision == "bf16"
    mlm_share = sum(getattr(t.objective, "mask_prob", 0.0) for t in tasks.tasks
                    if t.objective.name == "mlm")
    fpt = flops_per_token(model, tcfg.seq_len, mlm_share)
    es = tcfg.early_stopping
    state = {"tokens_seen": 0, "best": None, "bad_evals": 0, "last_loss": None}
    start = 0

    # resume: everything a checkpoint holds, so the run continues as if never stopped
    if run_dir is not None and tcfg.resume:
        result.resumed_from = _resume(run_dir, model, heads, opt, gen, tasks, state, total)
        start = result.resumed_from or 0
    if tcfg.compile:  # in place: objectives call model.base_model, which must be the compiled one
        model.base_model.compile(mode=None if tcfg.compile_mode == "default"
                                 else tcfg.compile_mode)
    model.train()
    ddp = _ddp(model, heads, tasks, device) if world.size > 1 else None  # under torchrun

    def run_eval(step: int) -> bool:
        """Evaluate; track the best; returns True when early stopping says stop."""
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            metrics = evaluate(model)
        model.train()
        result.metrics = metrics
        result.history.append({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        if on_log:
            on_log(result.history[-1])
        log.info("train: step %d eval %s", step,
                 ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return es is not None and _early_stop(metrics, es, state, model, run_dir)

    window = {"loss": 0.0, "tokens": 0, "steps": 0, "t0": time.perf_counter()}
    bar = tqdm(total=total, initial=start, desc="train", unit="step", leave=False,
               disable=not world.main)
    step = start
    stop = False
    frozen = -1
    evaluated_at = -1
    for step in range(start, total):
        # schedule: which layers train, and at what learning rate
        if frozen_layers_at(step, tcfg.freeze) != frozen or step == start:
            frozen = apply_freeze(model, tcfg.freeze, step)
        lr = lr_at(step, total, tcfg)
        _set_lr(opt, lr)
        # forward + backward, accumulated over micro-batches
        step_loss = torch.zeros((), device=device)  # stays on the device: no sync a step
        for micro in range(tcfg.grad_accum):
            last_micro = micro == tcfg.grad_accum - 1  # DDP averages gradients only then
            with autocast(result.precision, device), (
                    contextlib.nullcontext() if ddp is None or last_micro else ddp.no_sync()):
                loss, parts, tokens = (tasks.step_loss(model, gen) if ddp is None
                                       else ddp(gen))
                (loss / tcfg.grad_accum).backward()
            step_loss += loss.detach() / tcfg.grad_accum
            state["tokens_seen"] += tokens * world.size
            window["tokens"] += tokens * world.size
        # clip + step
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in trainable if p.grad is not None], tcfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window["loss"] += step_loss
        window["steps"] += 1
        bar.update(1)
        done = step + 1
        # the loss becomes a number (waiting for the device) only when it is logged or saved
        checkpointing = bool(tcfg.checkpoint_every) and done % tcfg.checkpoint_every == 0
        logging_now = done % tcfg.log_every == 0 or done == total
        if logging_now or checkpointing:
            state["last_loss"] = _finite(step_loss, done)
        # log
        if logging_now:
            elapsed = max(time.perf_counter() - window["t0"], 1e-9)
            row = {"step": done, "loss": float(window["loss"]) / window["steps"], "lr": lr,
                   "grad_norm": float(grad_norm), "tokens_per_s": window["tokens"] / elapsed,
                   "tokens_seen": state["tokens_seen"], "frozen_layers": frozen,
                   **{f"loss/{k}": float(v) for k, v in parts.items()}}
            if device.type == "cuda":
                row["mfu"] = row["tokens_per_s"] * fpt / (tcfg.peak_tflops * 1e12)
            result.history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            if world.main:  # the bar is gone when the run ends; a log line stays (and Prefect's)
                log.info("train: step %d/%d loss %.4f lr %.3g %.0f tokens/s", done, total,
                         row["loss"], lr, row["tokens_per_s"])
            if on_log and world.main:
                on_log(row)
            window = {"loss": 0.0, "tokens": 0, "steps": 0, "t0": time.perf_counter()}
        # evaluate
        if tcfg.eval_every and done % tcfg.eval_every == 0:
            if evaluate is not None and world.main:
                stop = run_eval(done)
                evaluated_at = done
            stop = distributed.broadcast(stop)  # rank 0 decides for every rank
        # checkpoint (after the evaluation, so the best and the patience are saved too)
        if run_dir is not None and world.main and tcfg.checkpoint_every and (
                done % tcfg.checkpoint_every == 0 or stop):
            save_checkpoint(run_dir, done, model, heads, opt, gen,
                            {**state, "data": tasks.state()}, tcfg.keep_checkpoints)
        if stop:
            state["last_loss"] = float(step_loss)
            result.stopped_early = True
            log.info("train: early stop at step %d: %s did not improve for %d evaluations",
                     done, es.metric, es.patience)
            break
    bar.close()
    # finish: a last evaluation unless the last step had one
    result.steps = step + 1 if total > start else start
    result.tokens_seen, result.final_loss = state["tokens_seen"], state["last_loss"]
    if evaluate is not None and world.main and evaluated_at != result.steps:
        run_eval(result.steps)
    # keep the best weights, not the last ones, when early stopping watched a metric
    if (es is not None and run_dir is not None and world.main
            and (run_dir / "best.safetensors").is_file()):
        load_model(model, str(run_dir / "best.safetensors"), device=str(device))
        result.metrics[f"best_{es.metric}"] = state["best"]
    result.best = state["best"]
    return result
