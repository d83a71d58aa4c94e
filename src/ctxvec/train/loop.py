"""The training loop: one plain function, read top to bottom.

Phases per step: schedule (warmup then linear decay) -> forward/backward over ``grad_accum``
micro-batches -> clip -> optimizer step -> log -> evaluate. Objectives are small objects with a
``loss(model, batch, generator)`` method; the loop knows nothing about what they compute.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ctxvec.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int = 0
    tokens_seen: int = 0
    final_loss: float | None = None
    eval_loss: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def lr_at(step: int, tcfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then linear decay to 0 at ``steps``."""
    if step < tcfg.warmup_steps:
        return tcfg.lr * (step + 1) / tcfg.warmup_steps
    remaining = max(tcfg.steps - tcfg.warmup_steps, 1)
    return tcfg.lr * max(0.0, 1.0 - (step - tcfg.warmup_steps) / remaining)


@torch.no_grad()
def evaluate_loss(model, objective, data: torch.Tensor, batch_size: int, seed: int) -> float:
    """Mean objective loss over held-out sequences with a fixed masking seed (comparable runs)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    losses = [
        objective.loss(model, data[i : i + batch_size], gen).item()
        for i in range(0, len(data), batch_size)
    ]
    model.train()
    return float(sum(losses) / len(losses))


def train(
    model,
    objective,
    train_data: torch.Tensor,
    eval_data: torch.Tensor | None,
    tcfg: TrainConfig,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``tcfg.steps`` optimizer steps over ``train_data`` (N, T)."""
    result = TrainResult()
    gen = torch.Generator().manual_seed(tcfg.seed)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=tcfg.lr,
    )
    model.train()
    n = len(train_data)
    order = torch.randperm(n, generator=gen)
    cursor = 0
    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    bar = tqdm(total=tcfg.steps, desc="train", unit="step", leave=False)
    for step in range(tcfg.steps):
        # schedule
        lr = lr_at(step, tcfg)
        for group in opt.param_groups:
            group["lr"] = lr
        # forward + backward, accumulated over micro-batches
        step_loss = 0.0
        for _ in range(tcfg.grad_accum):
            if cursor + tcfg.batch_size > n:  # new epoch: reshuffle
                order, cursor = torch.randperm(n, generator=gen), 0
            batch = train_data[order[cursor : cursor + tcfg.batch_size]]  # (B, T)
            cursor += tcfg.batch_size
            loss = objective.loss(model, batch, gen) / tcfg.grad_accum
            loss.backward()
            step_loss += loss.item()
            result.tokens_seen += batch.numel()
            window_tokens += batch.numel()
        # clip + step
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss became {step_loss} at step {step}; lower train.lr")
        result.steps, result.final_loss = step + 1, step_loss
        window_loss += step_loss
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
        # log
        if (step + 1) % tcfg.log_every == 0 or step + 1 == tcfg.steps:
            k = (step % tcfg.log_every) + 1
            elapsed = time.perf_counter() - window_start
            row = {
                "step": step + 1,
                "loss": window_loss / k,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                "tokens_seen": result.tokens_seen,
            }
            result.history.append(row)
            if on_log:
                on_log(row)
            window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    bar.close()
    # evaluate on held-out sequences
    if eval_data is not None and len(eval_data):
        result.eval_loss = evaluate_loss(model, objective, eval_data, tcfg.batch_size, tcfg.seed)
        log.info(
            "train: held-out MLM loss %.4f (perplexity %.1f)",
            result.eval_loss, math.exp(min(result.eval_loss, 50)),
        )
    return result
