"""The embeddings folder's files, whichever engine writes them (docs/architecture.md, Data
contracts).

One ``EmbedJob`` says everything a worker needs; ``embed_shard`` turns a batch of documents into
their chunks' table (token windows -> ``Encoder.encode_ids`` -> ``embeddings_schema``),
``write_shard`` writes it atomically as a ``part-*.parquet`` file, and ``write_embed_manifest``
describes the finished folder. The local engine (``corpus.run_embed``, one process per device) and
the Ray engine (``ray_engine.embed_on_ray``, a pool of Ray actors) both build on these, so their
outputs agree file for file; they live apart from both so that neither engine imports the other's
module to reach them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ctxvec.artifacts import Snapshot
from ctxvec.config import CtxvecConfig
from ctxvec.embed.truncate import stored_dim, truncate
from ctxvec.model.context_vectors import token_windows
from ctxvec.model.encoder import Encoder
from ctxvec.workspace import Workspace, write_manifest

SHARD_GLOB = "part-*.parquet"
WORDS_DIR = "words"


def embeddings_schema(dim: int, dtype: str = "float32") -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema(
        [
            ("doc_id", pa.string()),
            ("chunk", pa.int32()),
            ("start", pa.int32()),
            ("end", pa.int32()),
            ("model_version", pa.string()),
            ("vector", pa.list_(value, dim)),
        ]
    )


def chunk_documents(
    encoder: Encoder, texts: list[str], max_tokens: int, stride: int
) -> tuple[list[list[int]], list[int], list[int], list[tuple[int, int]]]:
    """-> (token ids per chunk, doc index per chunk, chunk number, (start, end) char offsets).

    The windows are ``token_windows``'s, the ones word vectors are read from too."""
    win = token_windows(encoder, texts, max_tokens, stride)
    chunk_no = []
    for i, doc in enumerate(win.text_of):
        chunk_no.append(chunk_no[-1] + 1 if i and win.text_of[i - 1] == doc else 0)
    return win.ids, win.text_of, chunk_no, list(zip(win.lo, win.hi, strict=True))


@dataclass(frozen=True)
class EmbedJob:
    """Everything a worker process needs to embed its shards (picklable)."""

    model_dir: str
    model_version: str
    corpus: list[str]
    work_dir: str
    max_tokens: int | None
    stride: int
    pooling: str
    precision: str
    dtype: str
    batch_size: int
    shard_docs: int
    dim: int | None = None  # embed.dim: vectors cut to this many components, re-normalised

    def load_encoder(self, device: str) -> Encoder:
        encoder = Encoder.load(self.model_dir, device=device, precision=self.precision)
        max_tokens = min(self.max_tokens or encoder.settings.max_length,
                         encoder.settings.max_length)
        pooling = encoder.settings.pooling if self.pooling == "model" else self.pooling
        encoder.settings = replace(encoder.settings, max_length=max_tokens, pooling=pooling)
        return encoder


def embed_shard(
    encoder: Encoder, job: EmbedJob, doc_ids: list[str], texts: list[str]
) -> pa.Table:
    """One shard of documents -> its embeddings table (chunks in document order)."""
    max_tokens = encoder.settings.max_length
    stride = min(job.stride, max_tokens // 2)
    ids, doc_of, chunk_no, spans = chunk_documents(encoder, texts, max_tokens, stride)
    vecs = encoder.encode_ids(ids, batch_size=job.batch_size) if ids else \
        np.empty((0, encoder.dim), np.float32)
    vecs = truncate(vecs, job.dim)  # embed.dim (the Searcher cuts queries the same way)
    dim = vecs.shape[1]
    np_dtype = np.float16 if job.dtype == "float16" else np.float32
    flat = pa.array(vecs.astype(np_dtype).ravel())
    table = pa.table(
        {
            "doc_id": [doc_ids[d] for d in doc_of],
            "chunk": pa.array(chunk_no, pa.int32()),
            "start": pa.array([s for s, _ in spans], pa.int32()),
            "end": pa.array([e for _, e in spans], pa.int32()),
            "model_version": [job.model_version] * len(ids),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        },
        schema=embeddings_schema(dim, job.dtype),
    )
    return table.replace_schema_metadata({"docs": str(len(doc_ids))})


def write_shard(table: pa.Table, path: Path) -> None:
    """Write a shard under a temporary name, then rename: a shard file is whole or absent."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def embed_devices(cfg: CtxvecConfig) -> list[str]:
    """The devices to embed on: every visible GPU (up to ``embed.devices``), else one CPU/GPU."""
    device = cfg.train.device
    if device in ("auto", "cuda") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        n = min(n, cfg.embed.devices) if cfg.embed.devices else n
        return [f"cuda:{i}" for i in range(n)]
    return [device if device != "auto" else "cpu"]


def output_settings(encoder: Encoder) -> dict[str, Any]:
    """What an encoder's vectors are (dimension, window, pooling, ...), as the manifest says."""
    s = encoder.settings
    return {"dim": encoder.dim, "max_tokens": s.max_length, "pooling": s.pooling,
            "normalized": s.normalize, "precision": encoder.precision,
            "device": str(encoder.device)}


def write_embed_manifest(
    work: Path, started: float, ws: Workspace, snapshot: Snapshot, job: EmbedJob,
    settings: dict[str, Any], rows: int, docs: int, resumed: int, words: Any, **fields: Any,
) -> None:
    """The embeddings folder's manifest, the same whichever engine wrote it (plus ``fields``:
    the engine's own figures)."""
    write_manifest(
        work, "embed", started, snapshot=snapshot.snapshot_id,
        corpus=[ws.uri_for(c) for c in job.corpus],
        model_dir=job.model_dir, model_version=job.model_version, rows=rows, docs=docs,
        dim=stored_dim(settings["dim"], job.dim), model_dim=settings["dim"], dtype=job.dtype,
        max_tokens=settings["max_tokens"],
        stride=min(job.stride, settings["max_tokens"] // 2),
        pooling=settings["pooling"], normalized=settings["normalized"],
        precision=settings["precision"], shards=len(list(work.glob(SHARD_GLOB))),
        resumed_shards=resumed, words=words, **fields,
    )


def count_embedded(folder: Path) -> tuple[int, int]:
    """(chunk rows, documents) of the shard files in an embeddings folder."""
    rows = docs = 0
    for f in sorted(folder.glob(SHARD_GLOB)):
        meta = pq.ParquetFile(f)
        rows += meta.metadata.num_rows
        docs += int((meta.schema_arrow.metadata or {}).get(b"docs", b"0"))
    return rows, docs
