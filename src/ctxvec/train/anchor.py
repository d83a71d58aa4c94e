"""Anchors to the model training starts from (``train.anchor``), so that learning a corpus does
not cost the general ability the starting model had (STS, other domains):

- ``l2sp`` (Li, Grandvalet and Davoine 2018, "Explicit Inductive Bias for Transfer Learning with
  Convolutional Networks"): ``weight * sum_i (theta_i - theta0_i)^2``, every trainable weight
  pulled back to its starting value alike. A ``MultiTask`` penalty (``name``,
  ``__call__(model)``); the continual update's L2-SP and EWC are built on it.
- ``distill`` (self-distillation toward the starting model, as feature-based knowledge
  distillation, Hinton et al. 2015; Reimers and Gurevych 2020): ``weight * mean(1 - cos(student(x),
  start(x)))`` over the anchors ``x`` of a sentence objective's batch, ``start`` a frozen copy of
  the starting encoder (one more forward without gradients a step, and the copy's memory). It
  is a task of its own whose sampler is a twin of that objective's (same examples, seed and
  batch size), so it sees exactly the anchors that objective trains on, step for step, resumes
  included. The student is run without dropout here, so the loss measures how far the function
  has moved, not dropout noise: it is 0 at the first step.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from ctxvec.config import AnchorConfig, ConfigError
from ctxvec.train.datasets import Sampler
from ctxvec.train.multitask import Task
from ctxvec.train.objectives.sentences import SentenceView


def trainable_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


class L2SP:
    name = "l2sp"

    def __init__(self, model: torch.nn.Module, weight: float, name: str | None = None):
        self.weight = weight
        if name is not None:
            self.name = name
        self.names = [n for n, _ in trainable_params(model)]
        self.anchor = [p.detach().clone() for _, p in trainable_params(model)]

    def _weights(self) -> list[torch.Tensor] | None:
        return None

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        scales = self._weights()
        total = None
        for i, (name, p0) in enumerate(zip(self.names, self.anchor, strict=True)):
            d = (params[name] - p0).pow(2)
            term = (d * scales[i]).sum() if scales is not None else d.sum()
            total = term if total is None else total + term
        return self.weight * total


class StartDistillation:
    """``1 - cos`` between the student's sentence vectors (no dropout) and the frozen starting
    encoder's, on single texts."""

    name = "anchor_distill"
    head = None

    def __init__(self, view: SentenceView, model: torch.nn.Module):
        self.view = view
        self.start = copy.deepcopy(model.base_model).eval()
        self.start.requires_grad_(False)

    def collate(self, texts: list[str]):
        return self.view.tokenize(list(texts))

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            target = self.view.embed(self.start, batch)
        was_training = model.training
        model.eval()
        try:
            student = self.view.embed(model, batch)
        finally:
            model.train(was_training)
        return (1.0 - F.cosine_similarity(student.float(), target.float(), dim=-1)).mean()


def anchor_texts(examples: Any) -> list[str] | None:
    """The anchor of each example (the text itself, or the first text of a tuple); None when the
    examples are not texts (MLM's packed rows)."""
    if not len(examples):
        return None
    first = examples[0]
    if isinstance(first, str):
        return list(examples)
    if isinstance(first, tuple | list) and first and isinstance(first[0], str):
        return [ex[0] for ex in examples]
    return None


def anchor_parts(acfg: AnchorConfig, model: torch.nn.Module, view: SentenceView,
                 tasks: list[Task]) -> tuple[list[Task], list[Any]]:
    """(extra tasks, penalties) that hold ``model`` near where it starts now; call before
    training, with the model at its starting weights."""
    if acfg.kind == "none":
        return [], []
    if acfg.kind == "l2sp":
        return [], [L2SP(model, acfg.strength, name="anchor_l2sp")]
    for task in tasks:
        texts = anchor_texts(task.examples)
        if texts is None:
            continue
        s = task.sampler  # its twin draws the same examples in the same order
        twin = Sampler(len(texts), s.seed, consumed=s.consumed, rank=s.rank, world=s.world)
        return [Task(StartDistillation(view, model), texts, acfg.strength, task.batch_size,
                     twin)], []
    raise ConfigError("train.anchor.kind=distill keeps the vectors of a sentence objective's "
                      "anchors, and every objective here trains on packed tokens (mlm): use "
                      "train.anchor.kind=l2sp")
