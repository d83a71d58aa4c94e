"""The check every export passes before it is published: the exported model, loaded the way its
users load it, must give ctxvec's own vectors (``Encoder.encode`` in fp32) for a few texts,
one of them longer than the encoder's window so that truncation is compared too."""

from __future__ import annotations

import numpy as np

MIN_COSINE = 0.9999

SHORT_TEXTS = (
    "A river in Germany.",
    "She took out a loan from the bank.",
    "The fishermen waited on the muddy bank of the river until the rain stopped.",
)


class ExportCheckError(RuntimeError):
    """The exported model does not reproduce ctxvec's vectors: nothing is published."""


def check_texts(tokenizer, max_length: int) -> list[str]:
    """``SHORT_TEXTS`` and one text longer than ``max_length`` tokens."""
    sentence = "The old mill by the river ground grain for the village every autumn. "
    long = sentence * 4
    while len(tokenizer(long, add_special_tokens=True)["input_ids"]) <= max_length + 8:
        long += sentence * 4
    return [*SHORT_TEXTS, long.strip()]


def min_cosine(ours: np.ndarray, theirs: np.ndarray) -> float:
    """The smallest row-wise cosine between two (N, D) arrays."""
    a = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    b = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def require_match(ours: np.ndarray, theirs: np.ndarray, what: str) -> float:
    """The min cosine of ``theirs`` to ``ours``; raises unless it is at least ``MIN_COSINE`` and
    the lengths agree too (a missing or extra normalisation changes lengths, not directions)."""
    if ours.shape != theirs.shape:
        raise ExportCheckError(f"{what} gives vectors of shape {theirs.shape}, ctxvec "
                               f"{ours.shape}; nothing written")
    cos = min_cosine(ours, theirs)
    norms = np.linalg.norm(theirs, axis=1) / np.linalg.norm(ours, axis=1)
    if not cos >= MIN_COSINE or not np.allclose(norms, 1.0, atol=1e-3):
        raise ExportCheckError(f"{what} does not reproduce ctxvec's vectors on {len(ours)} "
                               f"texts: min cosine {cos:.6f} (needs {MIN_COSINE}), length ratio "
                               f"{norms.min():.4f}..{norms.max():.4f}; nothing written")
    return cos
