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

Both are ``MultiTask`` penalties: ``name`` and ``__call__(model) -> scalar``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

log = logging.getLogger(__name__)


def _params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


class L2SP:
    name = "l2sp"

    def __init__(self, model: torch.nn.Module, weight: float):
        self.weight = weight
        self.names = [n for n, _ in _params(model)]
        self.anchor = [p.detach().clone() for _, p in _params(model)]

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
    scaled to mean 1 over all weights (in ``_params`` order). The model's mode and gradients are
    left as they were."""
    params = _params(model)
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
