"""Examples for each objective, and a sampler that can stop and resume at any example.

Sources: the workspace corpus (packed sequences for MLM, sentences for sentence objectives), an
STS Benchmark TSV (scored pairs for CoSENT, or positive pairs above a score for MNRL), a file of
text pairs, a file of labelled texts (JSONL with configurable fields, or TSV with columns in
that order), or the examples the mine stage mined from the corpus (``train.parquet`` of the
folder its ``MinedData`` record names: ``(anchor, positive, *negatives)`` tuples). Files are
small enough to hold in memory; the corpus is streamed and capped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from ctxvec.artifacts import MinedData
from ctxvec.config import DataConfig, ObjectiveConfig
from ctxvec.errors import UserInputError
from ctxvec.ingest.corpus import iter_texts
from ctxvec.train.sts import read_sts

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MAX_CORPUS_SENTENCES = 200_000
MINED_TRAIN_FILE = "train.parquet"  # in the mine stage's folder (ctxvec.adapt.mine writes it)
SENTENCE_OBJECTIVES = ("simcse", "tsdae")  # single corpus sentences
RANKING_OBJECTIVES = ("mnrl", "cached_mnrl")  # (anchor, positive, *negatives)


class Sampler:
    """Deterministic epochs: epoch e visits the examples in ``randperm(n, seed + e)``.

    ``consumed`` (examples handed out so far) is the whole state, so a checkpoint that stores it
    resumes on exactly the next example.
    """

    def __init__(self, n: int, seed: int, consumed: int = 0, rank: int = 0, world: int = 1):
        if n == 0:
            raise UserInputError("an objective has no training examples")
        self.n, self.seed, self.consumed = n, seed, consumed
        self.rank, self.world = rank, world
        self._epoch, self._order = -1, None

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._order

    def take(self, k: int) -> list[int]:
        """The next ``k`` examples of this rank: every rank draws the same ``world * k`` and
        keeps its own slice, so together they see each example once an epoch."""
        if self.world > 1:
            both = self._take(k * self.world)
            return both[self.rank * k : (self.rank + 1) * k]
        return self._take(k)

    def _take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            epoch, offset = divmod(self.consumed, self.n)
            step = min(k - len(out), self.n - offset)
            out += self._perm(epoch)[offset : offset + step].tolist()
            self.consumed += step
        return out


def corpus_sentences(corpus: list[str], limit: int | None) -> list[str]:
    return sentences_of(iter_texts(corpus), limit)


def sentences_of(texts, limit: int | None) -> list[str]:
    """Sentences of 5 to 64 words from ``texts``, at most ``limit`` (default 200,000)."""
    out: list[str] = []
    cap = limit or MAX_CORPUS_SENTENCES
    for text in texts:
        for s in _SENTENCE_END.split(text.replace("\n", " ")):
            if 5 <= len(s.split()) <= 64:
                out.append(s)
                if len(out) >= cap:
                    return out
    return out


def _rows(path: Path) -> list[list[str] | dict]:
    if not path.is_file():
        raise UserInputError(f"data file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if path.suffix in (".jsonl", ".json"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserInputError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
            else:
                rows.append(line.split("\t"))
    return rows


def _fields(row, names: list[str], path: Path) -> list[Any]:
    if isinstance(row, dict):
        missing = [n for n in names if n not in row]
        if missing:
            raise UserInputError(f"{path}: a row lacks field(s) {missing}; set data.text_fields")
        return [row[n] for n in names]
    if len(row) < len(names):
        raise UserInputError(f"{path}: a row has {len(row)} columns, {len(names)} needed")
    return row[: len(names)]


def _flat(values: list[Any]) -> tuple:
    """A row's texts as one tuple: a field holding a list (of negatives) is spread out."""
    return tuple(t for v in values for t in (v if isinstance(v, list) else [v]))


def mined_examples(mined: MinedData | None,
                   signals: list[str] | None = None) -> list[tuple[str, ...]]:
    """``(anchor, positive, *negatives)`` per mined row, in file order (the sampler shuffles).
    Rows may carry fewer negatives than ``adapt.negatives.per_example`` (some had none that
    passed the margin), so tuples differ in length. ``signals``: only those signals' rows."""
    if mined is None:
        raise UserInputError("data.source=mined needs the mine stage's data: run the recipe "
                             "with `ctxvec run`, `pretrain` or `finetune`, which mine first")
    path = Path(mined.path) / MINED_TRAIN_FILE
    if not path.is_file():
        raise UserInputError(f"mined data not found: {path}")
    t = pq.read_table(path, columns=["anchor", "positive", "negatives", "signal"]).to_pydict()
    rows = [(a, p, *(n or ())) for a, p, n, s in
            zip(t["anchor"], t["positive"], t["negatives"], t["signal"], strict=True)
            if signals is None or s in signals]
    if not rows:
        raise UserInputError(f"{path}: no mined row of signal(s) {', '.join(signals or [])} "
                             f"(mined: {', '.join(sorted(set(t['signal'])))}); turn the signal "
                             "on in the adapt section or change data.signals")
    return rows


def load_examples(ocfg: ObjectiveConfig, corpus: list[str] | None,
                  mined: MinedData | None = None) -> list[Any]:
    """The examples of one non-MLM objective (MLM reads packed sequences; see run.py)."""
    d: DataConfig = ocfg.data
    if d.source == "mined":
        examples: list[Any] = mined_examples(mined, d.signals)
    elif d.source == "corpus":
        if ocfg.name not in SENTENCE_OBJECTIVES:
            raise UserInputError(f"objective {ocfg.name} needs data.source sts, pairs or labels")
        if not corpus:
            raise UserInputError("data.source=corpus needs an ingested corpus")
        examples = corpus_sentences(corpus, d.max_examples)
    elif d.source == "sts":
        pairs = read_sts(d.path)
        if ocfg.name == "cosent":
            examples = list(zip(pairs.s1, pairs.s2, pairs.scores.tolist(), strict=True))
        elif ocfg.name in RANKING_OBJECTIVES:
            floor = 4.0 if d.min_score is None else d.min_score
            examples = [(a, b) for a, b, s in zip(pairs.s1, pairs.s2, pairs.scores, strict=True)
                        if s >= floor]
        else:
            raise UserInputError(f"data.source=sts does not fit objective {ocfg.name}")
    elif d.source == "pairs":
        wide = ocfg.name in RANKING_OBJECTIVES and len(d.text_fields) > 2  # hard negatives
        names = d.text_fields if len(d.text_fields) == 2 or wide else ["text1", "text2"]
        examples = [_flat(_fields(r, names, Path(d.path))) for r in _rows(Path(d.path))]
        if ocfg.name == "cosent":
            raise UserInputError("cosent needs scored pairs: use data.source=sts")
    else:  # labels
        path = Path(d.path)
        raw = [_fields(r, [d.text_fields[0], d.label_field], path) for r in _rows(path)]
        labels = sorted({str(y) for _, y in raw}, key=lambda v: (not v.isdigit(), v))
        index = {y: (int(y) if all(v.isdigit() for v in labels) else i)
                 for i, y in enumerate(labels)}
        examples = [(t, index[str(y)]) for t, y in raw]
        bad = [y for _, y in examples if not 0 <= y < ocfg.num_labels]
        if bad:
            raise UserInputError(f"{path}: label {bad[0]} outside [0, {ocfg.num_labels}); "
                                 "set num_labels")
    if d.max_examples:
        examples = examples[: d.max_examples]
    if not examples:
        raise UserInputError(f"objective {ocfg.name}: no examples from data.source={d.source}")
    return examples


def split_heldout(rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) rows: a seeded random ``fraction`` held out, at least one if any."""
    if fraction <= 0 or len(rows) < 2:
        return rows, rows[:0]
    n_eval = max(1, int(len(rows) * fraction))
    perm = np.random.default_rng(seed).permutation(len(rows))
    return rows[perm[n_eval:]], rows[perm[:n_eval]]
