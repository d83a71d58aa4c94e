"""``run_embed``: a snapshot -> one vector per chunk, in the embeddings Parquet of
docs/architecture.md (Data contracts).

Documents longer than the model's window are cut into overlapping token windows (``stride``
tokens shared); each chunk keeps the character offsets of the text it covers, so a hit can show
exactly what matched. Within a shard, chunks are encoded longest-first with per-batch padding.

The corpus is cut into shards of ``embed.shard_docs`` documents (in corpus order). Each shard is
written atomically as ``part-NNNNN.parquet`` into a work folder keyed by everything the vectors
depend on, so an interrupted run picks up at the first missing shard; the folder becomes the
embeddings folder only when every shard is there. With several GPUs, one process per GPU takes
every n-th shard.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from ctxvec.artifacts import Embeddings, Snapshot
from ctxvec.config import CtxvecConfig
from ctxvec.embed.ray_engine import embed_on_ray
from ctxvec.embed.shards import (
    SHARD_GLOB,
    WORDS_DIR,
    EmbedJob,
    count_embedded,
    embed_devices,
    embed_shard,
    output_settings,
    write_embed_manifest,
    write_shard,
)
from ctxvec.embed.threads import threads_for
from ctxvec.embed.truncate import stored_dim
from ctxvec.embed.words import run_words
from ctxvec.ingest.corpus import count_docs, iter_corpus
from ctxvec.model.encoder import Encoder
from ctxvec.workspace import Workspace, sha256_text

log = logging.getLogger(__name__)



def iter_shards(corpus: list[str], shard_docs: int) -> Iterator[tuple[int, list[str], list[str]]]:
    """(shard number, doc ids, texts) in corpus order, ``shard_docs`` documents per shard."""
    ids: list[str] = []
    texts: list[str] = []
    shard = 0
    for batch in iter_corpus(corpus, ("doc_id", "text"), batch_size=min(shard_docs, 4096)):
        ids.extend(batch.column(0).to_pylist())
        texts.extend(batch.column(1).to_pylist())
        while len(ids) >= shard_docs:
            yield shard, ids[:shard_docs], texts[:shard_docs]
            ids, texts = ids[shard_docs:], texts[shard_docs:]
            shard += 1
    if ids:
        yield shard, ids, texts


def shard_path(work_dir: str | Path, shard: int) -> Path:
    return Path(work_dir) / f"part-{shard:05d}.parquet"


def embed_worker(job: EmbedJob, device: str, rank: int = 0, world: int = 1,
                 encoder: Encoder | None = None, threads: int | None = None) -> int:
    """Embed the shards ``rank, rank + world, ...`` that are not written yet; -> shards done.
    A spawned worker (one of ``world``) computes with its share of ``threads`` CPU threads."""
    if world > 1:
        torch.set_num_threads(max(1, (threads or os.cpu_count() or 1) // world))
    encoder = encoder or job.load_encoder(device)
    total = count_docs(job.corpus)
    done = 0
    bar = tqdm(total=total, desc=f"embed[{device}]" if world > 1 else "embed", unit="doc",
               position=rank, leave=False)
    for shard, doc_ids, texts in iter_shards(job.corpus, job.shard_docs):
        mine = shard % world == rank
        if mine and not shard_path(job.work_dir, shard).exists():
            write_shard(embed_shard(encoder, job, doc_ids, texts),
                        shard_path(job.work_dir, shard))
            done += 1
        if mine or world == 1:
            bar.update(len(doc_ids))
    bar.close()
    return done


def _spawned_worker(job: EmbedJob, device: str, rank: int, world: int, threads: int) -> int:
    logging.basicConfig(level=logging.WARNING)
    return embed_worker(job, device, rank, world, threads=threads)


def run_workers(job: EmbedJob, devices: list[str], encoder: Encoder | None = None,
                threads: int | None = None) -> int:
    """One worker per device: in this process for one device (with ``encoder`` if loaded
    already), spawned processes for several, sharing ``threads`` CPU threads."""
    if len(devices) == 1:
        return embed_worker(job, devices[0], encoder=encoder)
    threads = threads or torch.get_num_threads()
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    with ctx.Pool(len(devices)) as pool:
        results = [pool.apply_async(_spawned_worker, (job, d, r, len(devices), threads))
                   for r, d in enumerate(devices)]
        return sum(r.get() for r in results)


def job_key(job: EmbedJob, model_files: str) -> str:
    """A hash of everything the vectors depend on: reused shards must match it exactly."""
    fields = {k: v for k, v in job.__dict__.items() if k not in ("work_dir", "batch_size")}
    if fields.get("dim") is None:  # full vectors: the key folders written before embed.dim had
        fields.pop("dim", None)
    return sha256_text(json.dumps(fields, sort_keys=True) + model_files)


def _model_fingerprint(model_dir: str) -> str:
    """Sizes and mtimes of the weight files: cheap, and changes when the weights do."""
    parts = []
    for f in sorted(Path(model_dir).glob("*")):
        if f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return ";".join(parts)


def run_embed(
    cfg: CtxvecConfig, ws: Workspace, snapshot: Snapshot, model_dir: str, model_version: str,
    devices: list[str] | None = None,
) -> Embeddings:
    """Embed every document of the snapshot's corpus view with one model version."""
    started = time.time()
    ecfg = cfg.embed
    job = EmbedJob(
        model_dir=str(model_dir), model_version=str(model_version),
        corpus=[str(c) for c in snapshot.corpus], work_dir="", max_tokens=ecfg.max_tokens,
        stride=ecfg.stride, pooling=ecfg.pooling, precision=ecfg.precision, dtype=ecfg.dtype,
        batch_size=ecfg.batch_size, shard_docs=ecfg.shard_docs, dim=ecfg.dim,
    )
    final = ws.embeddings / f"v{model_version}"
    key = job_key(job, _model_fingerprint(job.model_dir))
    if ecfg.engine == "ray":  # Ray Data actors on a Ray cluster: the same files and manifest
        return embed_on_ray(cfg, ws, snapshot, job, final, key, started)
    devices = devices or embed_devices(cfg)
    with threads_for(ecfg.threads, "embed.threads", "embed") as threads, \
            ws.resumable_dir(final, key) as work:
        job = replace(job, work_dir=str(work))
        resumed = len(list(work.glob(SHARD_GLOB)))
        if resumed:
            log.info("embed: resuming, %d shard(s) already written in %s", resumed, work)
        # One device: this process embeds with the encoder words and the manifest use too.
        # Several: the workers load their own; this one loads after them (no extra GPU copy).
        encoder = job.load_encoder(devices[0]) if len(devices) == 1 else None
        run_workers(job, devices, encoder, threads.count)
        encoder = encoder or job.load_encoder(devices[0])
        words = None
        if ecfg.words.enabled:
            words = run_words(cfg, encoder, job.corpus, work / WORDS_DIR, job.model_version)
        rows, docs = count_embedded(work)
        write_embed_manifest(
            work, started, ws, snapshot, job, output_settings(encoder), rows, docs,
            resumed=resumed, words=words, devices=devices, shard_docs=job.shard_docs,
        )
    log.info("embed: %d chunks from %d documents in %.1fs", rows, docs, time.time() - started)
    return Embeddings(str(final), rows, docs, stored_dim(encoder.dim, job.dim),
                      str(model_version))


def read_embeddings_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All shards of an embeddings folder (or one Parquet file) as one table, in shard order."""
    p = Path(path)
    files = sorted(p.glob(SHARD_GLOB)) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no embeddings shards ({SHARD_GLOB}) in {p}")
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


def read_vectors(path: str | Path) -> tuple[np.ndarray, pa.Table]:
    """-> (float32 vectors (N, D), the other columns) of an embeddings folder or file."""
    table = read_embeddings_table(path)
    col = table.column("vector").combine_chunks()
    dim = col.type.list_size
    vecs = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return vecs, table.drop_columns(["vector"])
