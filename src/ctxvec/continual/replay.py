"""Replay: earlier data mixed into an update so that it keeps what it learned (Rolnick et al.
2019, "Experience Replay for Continual Learning"); ``continual.replay_ratio`` is the share of the
update's data that is earlier data, whatever the kind: packed MLM sequences, corpus sentences,
documents to mine."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def replay_count(n_new: int, ratio: float) -> int:
    """Earlier examples to mix with ``n_new`` new ones so that they make ``ratio`` of the data."""
    return int(round(n_new * ratio / (1 - ratio))) if ratio > 0 else 0


def replay_rows(new_rows: np.ndarray, old_rows: np.ndarray, ratio: float,
                seed: int) -> np.ndarray:
    """``ratio / (1 - ratio)`` earlier rows per new row (fewer if that many do not exist)."""
    if ratio <= 0 or not len(old_rows):
        return old_rows[:0]
    want = replay_count(len(new_rows), ratio)
    if want > len(old_rows):
        log.warning("update: replay wants %d earlier rows, only %d exist: using all",
                    want, len(old_rows))
        want = len(old_rows)
    pick = np.random.default_rng(seed).choice(len(old_rows), want, replace=False)
    return old_rows[np.sort(pick)]
