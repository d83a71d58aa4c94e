"""Semantic textual similarity: Spearman correlation between cosine similarity and gold scores.

Input: the STS Benchmark TSV (``genre, file, year, id, score, sentence1, sentence2``, tab-separated,
no quoting; some rows carry extra licence fields, which are ignored). This is the evaluation of
Reimers & Gurevych (2019), Sentence-BERT, and of the sentence-transformers leaderboard.

Why in ``ctxvec.train`` and not ``ctxvec.evaluate``: training reads the same file as CoSENT and
MNRL data (``datasets.load_examples``) and scores its dev set during training for early stopping
(``run._sts_eval``), and train sits below evaluate in the layers. ``ctxvec.evaluate.run`` and
``ctxvec evaluate sts`` score a model with it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ctxvec.errors import DataFormatError
from ctxvec.model.encoder import Encoder


@dataclass(frozen=True)
class StsPairs:
    s1: list[str]
    s2: list[str]
    scores: np.ndarray


def read_sts(path: str | Path) -> StsPairs:
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"STS file not found: {path}")
    s1, s2, scores = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 7:
                raise DataFormatError(
                    f"{path}:{lineno}: expected 7 tab-separated fields "
                    f"(genre, file, year, id, score, sentence1, sentence2), got {len(fields)}"
                )
            try:
                score = float(fields[4])
            except ValueError:
                raise DataFormatError(
                    f"{path}:{lineno}: score {fields[4]!r} is not a number"
                ) from None
            s1.append(fields[5])
            s2.append(fields[6])
            scores.append(score)
    if not scores:
        raise DataFormatError(f"{path}: no sentence pairs")
    return StsPairs(s1, s2, np.asarray(scores, dtype=np.float64))


def evaluate_sts(encoder: Encoder, pairs: StsPairs, batch_size: int = 64) -> dict[str, float]:
    """-> {"spearman": ..., "pearson": ..., "n": ...} of cosine(sentence1, sentence2) vs gold."""
    # Encode each distinct sentence once; STS reuses many sentences across pairs.
    unique = sorted(set(pairs.s1) | set(pairs.s2))
    vecs = encoder.encode(unique, batch_size=batch_size, progress=True)
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    row = {s: i for i, s in enumerate(unique)}
    a = vecs[[row[s] for s in pairs.s1]]
    b = vecs[[row[s] for s in pairs.s2]]
    cos = (a * b).sum(axis=1)
    return {
        "spearman": float(spearmanr(cos, pairs.scores).statistic),
        "pearson": float(np.corrcoef(cos, pairs.scores)[0, 1]),
        "n": len(pairs.scores),
    }
