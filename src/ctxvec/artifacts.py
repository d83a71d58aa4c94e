"""Small frozen records that each ``run_<stage>`` returns: paths, hashes and counts.

They are what flows pass between tasks and what the CLI prints, so they stay plain and JSON-able.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ctxvec.refs import ModelRef


@dataclass(frozen=True)
class _Record:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Snapshot(_Record):
    """An ingest's result: its snapshot and the corpus (every snapshot up to it)."""

    snapshot_id: str
    path: str
    corpus: list[str]  # snapshot folders, oldest first; readers take each doc's newest version
    corpus_docs: int
    created: bool  # False when nothing was new: snapshot_id is then the latest existing one
    read: int
    kept: int
    duplicates: int
    near_duplicates: int
    filtered: int
    quarantined: int
    skipped_files: int  # unchanged since an earlier snapshot: not read again
    deferred: int  # left unread at ingest.max_docs; a later ingest picks them up


@dataclass(frozen=True)
class TokenizerArtifact(_Record):
    path: str  # a transformers fast-tokenizer folder (tokenizer.json inside)
    sha256: str  # of tokenizer.json
    vocab_size: int
    kind: str  # wordpiece | bpe | unigram | model
    stats: dict[str, float]  # held-out fertility, unk_rate, word_coverage (empty for 'model')


@dataclass(frozen=True)
class PackedData(_Record):
    path: str  # a folder of Parquet shards (input_ids, length[, a_len]) + manifest.json
    shards: int
    sequences: int
    tokens: int  # real (non-padding) tokens
    seq_len: int
    mode: str  # concat | doc | pair


@dataclass(frozen=True)
class MinedData(_Record):
    """The mine stage's result: a folder ``mined/<key>/`` holding ``train.parquet`` (``anchor,
    positive, negatives, signal, doc_id``), ``heldout.parquet`` (``query, doc_id, signal``),
    ``docs.parquet`` (``doc_id, text``: what the label-free evaluation searches) and a manifest.
    Training and evaluation read the files; neither imports ``ctxvec.adapt``."""

    path: str
    key: str
    counts: dict[str, int]  # training examples per signal
    heldout: int  # held-out pseudo-queries (never trained on)
    docs: int  # documents mined (held-out ones included)


@dataclass(frozen=True)
class TrainedModel(_Record):
    run_dir: str
    model_dir: str  # a Hugging Face folder: config.json, model.safetensors, tokenizer files
    steps: int
    tokens_seen: int
    final_loss: float | None
    eval_loss: float | None
    parent: str | None  # the model reference training started from, if any
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation in training


@dataclass(frozen=True)
class EvalReport(_Record):
    metrics: dict[str, float]
    skipped: dict[str, str]  # evaluation name -> reason


@dataclass(frozen=True)
class RegisteredModel(_Record):
    name: str
    version: str
    run_id: str
    uri: str  # models:/<name>/<version>

    @property
    def ref(self) -> ModelRef:
        """The pinned registry reference of this version."""
        return ModelRef.parse(self.uri)


@dataclass(frozen=True)
class Embeddings(_Record):
    path: str
    rows: int
    docs: int
    dim: int
    model_version: str


@dataclass(frozen=True)
class IndexArtifact(_Record):
    path: str
    factory: str
    count: int
    dim: int
    recall_at_10: float
    model_version: str
