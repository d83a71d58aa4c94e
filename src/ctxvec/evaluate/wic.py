"""Word-in-Context accuracy: does a word mean the same thing in two sentences?

WiC (Pilehvar & Camacho-Collados 2019, "WiC: the Word-in-Context Dataset for Evaluating
Context-Sensitive Meaning Representations") pairs two sentences that share a target word and asks
whether the word has the same sense in both. Here, with no training at all: take the target's
context vector in each sentence (``ctxvec.model.context_vectors.span_vectors``: the mean of its
subword vectors at one hidden layer), compare them by cosine, and call the pair "same sense" when
the cosine reaches a threshold. The threshold is the one that maximises accuracy on the ``train``
split of the same folder, so the reported accuracy on ``dev`` is held out. This is the
threshold baseline of the WiC paper's contextualised-embedding rows; chance is 50% (labels are
balanced).

Input: the original WiC layout, ``<folder>/<split>/<split>.data.txt`` (tab-separated: word, PoS,
``i1-i2`` whitespace-token indices of the target in sentence 1 and sentence 2, sentence 1,
sentence 2) and ``<split>.gold.txt`` (``T``/``F``, one per line, aligned by line).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctxvec.errors import DataFormatError
from ctxvec.model.context_vectors import SpanError, span_vectors, word_span
from ctxvec.model.encoder import Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WicPairs:
    words: list[str]
    s1: list[str]
    s2: list[str]
    span1: list[tuple[int, int]]  # character span of the target in s1
    span2: list[tuple[int, int]]
    labels: np.ndarray  # bool (N,): True = same sense


def read_wic(folder: str | Path, split: str) -> WicPairs:
    folder = Path(folder)
    data_path = folder / split / f"{split}.data.txt"
    gold_path = folder / split / f"{split}.gold.txt"
    for p in (data_path, gold_path):
        if not p.is_file():
            raise DataFormatError(
                f"WiC file not found: {p} (expected <folder>/<split>/<split>.data.txt and "
                "<split>.gold.txt)"
            )
    words, s1, s2, span1, span2 = [], [], [], [], []
    with open(data_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            where = f"{data_path}:{lineno}"
            if len(fields) != 5:
                raise DataFormatError(
                    f"{where}: expected 5 tab-separated fields (word, PoS, i1-i2, sentence1, "
                    f"sentence2), got {len(fields)}"
                )
            word, _pos, idx, a, b = fields
            try:
                i1, i2 = (int(x) for x in idx.split("-"))
            except ValueError:
                raise DataFormatError(
                    f"{where}: indices {idx!r} are not two integers joined by '-'"
                ) from None
            try:
                span1.append(word_span(a, i1))
                span2.append(word_span(b, i2))
            except SpanError as e:
                raise DataFormatError(f"{where}: {e}") from None
            words.append(word)
            s1.append(a)
            s2.append(b)
    labels = []
    with open(gold_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            tag = line.strip()
            if not tag:
                continue
            if tag not in ("T", "F"):
                raise DataFormatError(f"{gold_path}:{lineno}: expected T or F, got {tag!r}")
            labels.append(tag == "T")
    if len(labels) != len(words):
        raise DataFormatError(
            f"{gold_path} has {len(labels)} labels but {data_path} has {len(words)} pairs"
        )
    if not words:
        raise DataFormatError(f"{data_path}: no pairs")
    return WicPairs(words, s1, s2, span1, span2, np.asarray(labels, dtype=bool))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold t maximising the accuracy of ``score >= t`` -> (t, accuracy).

    Sort once and scan every cut between distinct scores (plus "all true" and "all false"):
    O(n log n). Ties in accuracy go to the lowest threshold; a returned t sits at the midpoint
    between the two scores it separates, so it generalises no worse to either side.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape or scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"need two equal, non-empty 1-D arrays, got {scores.shape} and "
                         f"{labels.shape}")
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order]
    n = len(s)
    # Cut c: the first c sorted pairs are predicted False, the rest True.
    false_below = np.concatenate([[0], np.cumsum(~y)])  # (n + 1,)
    true_above = y.sum() - np.concatenate([[0], np.cumsum(y)])  # (n + 1,)
    correct = false_below + true_above
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[1:] > s[:-1]  # a cut may not split tied scores
    correct = np.where(valid, correct, -1)
    c = int(np.argmax(correct))
    if c == 0:
        t = s[0]
    elif c == n:
        t = float(np.nextafter(s[-1], np.inf))
    else:
        t = (s[c - 1] + s[c]) / 2
        if t <= s[c - 1]:  # adjacent floats: no midpoint between them
            t = s[c]
    return float(t), float(correct[c] / n)


def _cosines(encoder: Encoder, pairs: WicPairs, layer: int, batch_size: int) -> np.ndarray:
    vecs = span_vectors(encoder, pairs.s1 + pairs.s2, pairs.span1 + pairs.span2,
                        layer=layer, batch_size=batch_size, progress=True)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    n = len(pairs.s1)
    return (vecs[:n] * vecs[n:]).sum(axis=1)


def evaluate_wic(
    encoder: Encoder, folder: str | Path, split: str = "dev", layer: int = -1,
    batch_size: int = 64,
) -> dict[str, float]:
    """-> {"accuracy", "threshold", "n", "train_accuracy"}: threshold fitted on train."""
    train = read_wic(folder, "train")
    evaluated = train if split == "train" else read_wic(folder, split)
    log.info("wic: %d train pairs set the threshold", len(train.words))
    threshold, train_acc = best_threshold(_cosines(encoder, train, layer, batch_size),
                                          train.labels)
    if split == "train":
        accuracy = train_acc
    else:
        log.info("wic: %d %s pairs", len(evaluated.words), split)
        cos = _cosines(encoder, evaluated, layer, batch_size)
        accuracy = float(((cos >= threshold) == evaluated.labels).mean())
    return {
        "accuracy": accuracy,
        "threshold": threshold,
        "n": len(evaluated.words),
        "train_accuracy": train_acc,
    }
