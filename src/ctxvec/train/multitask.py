"""Multi-task learning as a weighted sum of objectives over interleaved datasets (one shared
encoder; Caruana 1997, and the MT-DNN recipe of Liu et al. 2019 without task sampling).

Every optimizer step draws one batch for each task from that task's own sampler and adds
``weight * loss``. With one task this is plain single-objective training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ctxvec.train.datasets import Sampler


@dataclass
class Task:
    objective: Any
    examples: Any  # list of examples, or an array of packed rows
    weight: float
    batch_size: int
    sampler: Sampler


def batch_tokens(batch: Any) -> int:
    """Real tokens in a collated batch (attention-mask sums; every element of bare id tensors)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.numel()) if batch.dtype == torch.long else 0
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        return int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
    if isinstance(batch, tuple | list):
        return sum(batch_tokens(b) for b in batch)
    return 0


class MultiTask:
    """``penalties``: extra terms of the loss that need no data, each with ``name`` and
    ``__call__(model) -> scalar tensor`` (the continual update's L2-SP and EWC); their weight is
    their own."""

    def __init__(self, tasks: list[Task], penalties: list[Any] | None = None):
        self.tasks = tasks
        self.penalties = list(penalties or [])

    def heads(self) -> dict[str, torch.nn.Module]:
        return {t.objective.name: t.objective.head for t in self.tasks
                if t.objective.head is not None}

    def state(self) -> dict[str, int]:
        return {f"{i}:{t.objective.name}": t.sampler.consumed for i, t in enumerate(self.tasks)}

    def load_state(self, state: dict[str, int]) -> None:
        for i, t in enumerate(self.tasks):
            t.sampler.consumed = int(state.get(f"{i}:{t.objective.name}", 0))

    def step_loss(self, model, generator: torch.Generator) -> tuple[torch.Tensor, dict, int]:
        """-> (weighted loss, {objective: detached loss tensor}, tokens processed). Nothing here
        waits for the GPU: the loop turns losses into numbers only when it logs."""
        total, parts, tokens = None, {}, 0
        for t in self.tasks:
            idx = t.sampler.take(t.batch_size)
            batch = t.objective.collate([t.examples[i] for i in idx])
            loss = t.objective.loss(model, batch, generator)
            parts[t.objective.name] = loss.detach()
            tokens += batch_tokens(batch)
            total = t.weight * loss if total is None else total + t.weight * loss
        for p in self.penalties:
            value = p(model)
            parts[p.name] = value.detach()
            total = total + value
        return total, parts, tokens
