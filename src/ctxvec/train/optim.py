"""Optimisation for fine-tuning: parameter groups with layer-wise learning-rate decay, frozen
layers and gradual unfreezing, and the learning-rate schedule.

- Layer-wise lr decay (Clark et al. 2020, ELECTRA; Sun et al. 2019, "How to Fine-Tune BERT for
  Text Classification"): the top transformer layer trains at ``lr``, each layer below at ``llrd``
  times the one above, the embeddings below the bottom layer; heads train at ``lr``.
- Freezing: the embeddings and/or the first N layers keep their pretrained weights.
- Gradual unfreezing (Howard and Ruder 2018, ULMFiT): every ``unfreeze_every`` steps the highest
  frozen layer starts training.
"""

from __future__ import annotations

import math

import torch

from ctxvec.config import FreezeConfig, TrainConfig


def encoder_layers(model) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """(embeddings, transformer layers bottom-up) of a BERT-family model."""
    base = model.base_model
    try:
        return base.embeddings, list(base.encoder.layer)
    except AttributeError as e:
        raise TypeError(f"{type(model).__name__} is not a BERT-family encoder") from e


def param_groups(model, heads: list[torch.nn.Module], tcfg: TrainConfig) -> list[dict]:
    embeddings, layers = encoder_layers(model)
    depth: dict[int, int] = {}  # id(param) -> layer depth (0 = embeddings, L = top layer)
    for p in embeddings.parameters():
        depth[id(p)] = 0
    for i, layer in enumerate(layers, start=1):
        for p in layer.parameters():
            depth[id(p)] = i
    top = len(layers)
    groups: dict[tuple[float, bool], list] = {}
    params = [(n, p) for n, p in model.named_parameters()]
    params += [(f"head.{n}", p) for h in heads for n, p in h.named_parameters()]
    seen: set[int] = set()
    for name, p in params:
        if id(p) in seen:  # tied weights (MLM decoder = word embeddings) appear twice
            continue
        seen.add(id(p))
        scale = tcfg.llrd ** (top - depth.get(id(p), top))
        no_decay = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
        groups.setdefault((scale, no_decay), []).append(p)
    return [
        {"params": ps, "lr_scale": scale, "weight_decay": 0.0 if nd else tcfg.weight_decay}
        for (scale, nd), ps in sorted(groups.items(), key=lambda kv: kv[0])
    ]


FUSED_ADAMW_DEVICES = ("cuda", "cpu")  # where torch (>= 2.4 for the CPU) has the fused kernel


def adamw(groups: list[dict], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``groups``, fused on a GPU and on a CPU: one kernel updates each parameter in
    one pass, where the default for-loop AdamW makes about a dozen passes over every parameter
    and its two moments, each a separate kernel. The update is the same (equal to float rounding,
    tested), and the state dict has the same keys, so checkpoints resume either way. The HF
    Trainer's default (``adamw_torch_fused``) is the same optimizer."""
    return torch.optim.AdamW(groups, lr=lr, fused=device.type in FUSED_ADAMW_DEVICES)


def frozen_layers_at(step: int, fcfg: FreezeConfig) -> int:
    if fcfg.unfreeze_every is None:
        return fcfg.layers
    return max(0, fcfg.layers - step // fcfg.unfreeze_every)


def apply_freeze(model, fcfg: FreezeConfig, step: int) -> int:
    """Set requires_grad for this step; returns how many layers are frozen."""
    embeddings, layers = encoder_layers(model)
    n = min(frozen_layers_at(step, fcfg), len(layers))
    for p in embeddings.parameters():
        p.requires_grad_(not fcfg.embeddings)
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            p.requires_grad_(i >= n)
    return n


def lr_at(step: int, total: int, tcfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then linear or cosine decay to 0 at ``total``, or constant."""
    if step < tcfg.warmup_steps:
        return tcfg.lr * (step + 1) / tcfg.warmup_steps
    if tcfg.schedule == "constant":
        return tcfg.lr
    progress = min(1.0, (step - tcfg.warmup_steps) / max(total - tcfg.warmup_steps, 1))
    if tcfg.schedule == "cosine":
        return tcfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return tcfg.lr * (1.0 - progress)
