"""Penalties that hold a model near the weights it started from, so that training on new data
does not overwrite what the earlier data taught it.

- ``L2SP`` (Li, Grandvalet and Davoine 2018, "Explicit Inductive Bias for Transfer Learning with
  Convolutional Networks"): ``weight * sum_i (theta_i - theta0_i)^2``: every weight is pulled
  back to its starting value alike.
- ``EWC`` (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks"):
  ``weight * sum_i F_i (theta_i - theta0_i)^2`` with ``F`` the diagonal of the empirical Fisher
  information on earlier data (mean squared gradient of its loss): weights the earlier data relied
  on are held firmly, the others move freely. ``F`` is scaled to mean 1, so that one ``weight``
  means the same total pull as L2-SP's and only its distribution differs.

Both are ``MultiTask`` penalties: ``name`` and ``__call__(model) -> scalar``. L2-SP lives in
``ctxvec.train.anchor`` (any training run can anchor to its starting model with it); EWC is
L2-SP with per-weight scales, and only the continual update has earlier data for its Fisher.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

from ctxvec.train.anchor import L2SP, trainable_params

__all__ = ["EWC", "L2SP", "fisher_diagonal"]

log = logging.getLogger(__name__)


class EWC(L2SP):
    name = "ewc"

    def __init__(self, model: torch.nn.Module, weight: float,
                 loss_fn: Callable[[torch.nn.Module, object], torch.Tensor],
                 batches: Iterable[object]):
        super().__init__(model, weight)
        self.fisher = fisher_diagonal(model, loss_fn, batches)

    def _weights(self) -> list[torch.Tensor]:
        return self.fisher


def fisher_diagonal(model: torch.nn.Module, loss_fn,
                    batches: Iterable[object]) -> list[torch.Tensor]:
    """Mean squared gradient of ``loss_fn(model, batch)`` over ``batches``, per trainable weight,
    scaled to mean 1 over all weights (in ``trainable_params`` order). The model's mode and
    gradients are left as they were."""
    params = trainable_params(model)
    fisher = [torch.zeros_like(p) for _, p in params]
    was_training = model.training
    model.eval()  # no dropout: the curvature of the function that was trained
    n = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        for f, (_, p) in zip(fisher, params, strict=True):
            if p.grad is not None:
                f += p.grad.detach().pow(2)
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if n == 0:
        raise ValueError("EWC needs at least one batch of earlier data for its Fisher")
    total = sum(float(f.sum()) for f in fisher)
    count = sum(f.numel() for f in fisher)
    mean = total / count if total > 0 else 1.0
    log.info("ewc: Fisher diagonal from %d batches (mean squared gradient %.3g)",
             n, total / n / count)
    return [f / mean for f in fisher]
