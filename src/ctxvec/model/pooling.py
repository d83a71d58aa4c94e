"""Pooling token vectors into one vector per sequence.

Mean pooling over non-padding tokens is what sentence-transformers uses for all-MiniLM-L6-v2; CLS
and max are the two other common choices.
"""

from __future__ import annotations

from typing import Literal

import torch

Pooling = Literal["mean", "cls", "max"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: Pooling = "mean") -> torch.Tensor:
    """hidden (B, T, D), mask (B, T) of 0/1 -> (B, D)."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if mode == "mean":
        summed = (hidden * m).sum(dim=1)  # (B, D)
        counts = m.sum(dim=1).clamp(min=1e-9)  # (B, 1)
        return summed / counts
    if mode == "max":
        filled = hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min)
        return filled.max(dim=1).values
    raise ValueError(f"unknown pooling {mode!r}")
