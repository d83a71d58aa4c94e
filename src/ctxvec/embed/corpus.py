"""``run_embed``: a snapshot -> one vector per chunk, in the embeddings Parquet of DESIGN.md.

Documents longer than the model's window are cut into overlapping token windows (``stride``
tokens shared); each chunk keeps the character offsets of the text it covers, so a hit can show
exactly what matched. Chunks are encoded longest-first with per-batch padding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctxvec.artifacts import Embeddings, Snapshot
from ctxvec.config import CtxvecConfig
from ctxvec.ingest.corpus import iter_corpus
from ctxvec.model.encoder import Encoder
from ctxvec.workspace import Workspace, write_manifest

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.parquet"
DOC_BATCH = 512


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
    """-> (token ids per chunk, doc index per chunk, chunk number, (start, end) char offsets)."""
    enc = encoder.tokenizer(
        texts,
        truncation=True,
        max_length=max_tokens,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    doc_of = enc["overflow_to_sample_mapping"]
    chunk_no, spans = [], []
    last_doc, n = -1, 0
    for i, doc in enumerate(doc_of):
        n = n + 1 if doc == last_doc else 0
        last_doc = doc
        chunk_no.append(n)
        offs = [o for o, sp in zip(enc["offset_mapping"][i], enc["special_tokens_mask"][i],
                                   strict=True) if not sp]
        spans.append((offs[0][0], offs[-1][1]) if offs else (0, 0))
    return enc["input_ids"], list(doc_of), chunk_no, spans


def iter_doc_batches(corpus: list[str]) -> Iterator[tuple[list[str], list[str]]]:
    for batch in iter_corpus(corpus, ("doc_id", "text"), batch_size=DOC_BATCH):
        yield batch.column(0).to_pylist(), batch.column(1).to_pylist()


def run_embed(
    cfg: CtxvecConfig, ws: Workspace, snapshot: Snapshot, model_dir: str, model_version: str
) -> Embeddings:
    started = time.time()
    ecfg = cfg.embed
    encoder = Encoder.load(model_dir, device=cfg.train.device)
    max_tokens = min(ecfg.max_tokens or encoder.settings.max_length, encoder.settings.max_length)
    stride = min(ecfg.stride, max_tokens // 2)
    schema = embeddings_schema(encoder.dim, ecfg.dtype)
    np_dtype = np.float16 if ecfg.dtype == "float16" else np.float32
    final = ws.embeddings / f"v{model_version}"
    rows, docs = 0, 0
    with ws.stage_dir(final) as tmp:
        with pq.ParquetWriter(tmp / EMBEDDINGS_FILE, schema) as writer:
            for doc_ids, texts in iter_doc_batches(snapshot.corpus):
                ids, doc_of, chunk_no, spans = chunk_documents(encoder, texts, max_tokens, stride)
                vecs = encoder.encode_ids(ids, batch_size=ecfg.batch_size, progress=True)
                flat = pa.array(vecs.astype(np_dtype).ravel())
                table = pa.table(
                    {
                        "doc_id": [doc_ids[d] for d in doc_of],
                        "chunk": pa.array(chunk_no, pa.int32()),
                        "start": pa.array([s for s, _ in spans], pa.int32()),
                        "end": pa.array([e for _, e in spans], pa.int32()),
                        "model_version": [model_version] * len(ids),
                        "vector": pa.FixedSizeListArray.from_arrays(flat, encoder.dim),
                    },
                    schema=schema,
                )
                writer.write_table(table)
                rows += len(ids)
                docs += len(doc_ids)
                log.info("embed: %d documents, %d chunks so far", docs, rows)
        write_manifest(
            tmp, "embed", started, snapshot=snapshot.snapshot_id, corpus=snapshot.corpus,
            model_dir=model_dir, model_version=model_version, rows=rows, docs=docs,
            dim=encoder.dim, dtype=ecfg.dtype, max_tokens=max_tokens, stride=stride,
            pooling=encoder.settings.pooling, normalized=encoder.settings.normalize,
        )
    log.info("embed: %d chunks from %d documents in %.1fs", rows, docs, time.time() - started)
    return Embeddings(str(final), rows, docs, encoder.dim, model_version)


def read_vectors(path: str | Path) -> tuple[np.ndarray, pa.Table]:
    """-> (float32 vectors (N, D), the other columns) of an embeddings folder or file."""
    p = Path(path)
    table = pq.read_table(p / EMBEDDINGS_FILE if p.is_dir() else p)
    col = table.column("vector").combine_chunks()
    dim = col.type.list_size
    vecs = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return vecs, table.drop_columns(["vector"])
