"""The precision training computes in: ``train.precision`` resolved for the device it runs on.

``auto`` follows the rule embedding follows (``ctxvec.model.encoder.resolve_precision``): bf16
autocast on a GPU, and on a CPU whose oneDNN runs bf16 matmuls natively (AMX or AVX512-BF16),
where a bf16 matmul costs about half an fp32 one; fp32 elsewhere, since a CPU without bf16 units
emulates bf16 and runs it slower than fp32. The weights, the optimizer state and the gradients
stay fp32 under autocast (only the matmuls and attention compute in bf16), so a bf16 run's loss
follows the fp32 run's within noise and its checkpoints are fp32.

The resolved value is written into the run's manifest (``precision``) and from there into the
registered version's MLflow run parameters (``train.precision_resolved``), so a version says
which one it was trained in, not only what the recipe asked for.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

import torch

from ctxvec.model.encoder import cpu_has_bf16, resolve_precision

log = logging.getLogger(__name__)

Resolved = Literal["fp32", "bf16"]


def train_precision(setting: str, device: torch.device, announce: bool = False) -> Resolved:
    """``train.precision`` (auto, fp32, bf16) on ``device`` -> fp32 or bf16; ``announce``: log
    the choice and why (``train: precision bf16 (auto: this CPU has bf16 units ...)``)."""
    resolved = resolve_precision(setting, device)  # type: ignore[arg-type]
    if announce:
        log.info("train: precision %s (%s)", resolved, why(setting, resolved, device))
    return resolved


def why(setting: str, resolved: Resolved, device: torch.device) -> str:
    """A few words on where ``resolved`` came from, for the log."""
    if setting != "auto":
        return "train.precision"
    if device.type == "cuda":
        return "auto: a GPU"
    if device.type == "cpu":
        return ("auto: this CPU has bf16 units (AMX or AVX512-BF16)" if cpu_has_bf16()
                else "auto: this CPU has no bf16 units")
    return f"auto: {device.type}"


def autocast(resolved: Resolved, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``resolved`` is bf16, else nothing."""
    if resolved == "bf16":
        return torch.autocast(device.type, torch.bfloat16)
    return contextlib.nullcontext()
