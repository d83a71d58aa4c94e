"""``run_index``: an embeddings folder -> an index folder for exactly one model version.

The folder holds the dense index of ``index.backend`` (``ctxvec.index.factory``; FAISS:
``index.faiss`` + ``index.json``), ``ids.parquet`` (stable int64 id -> doc id, chunk, char
offsets and the metadata columns filters use), optionally ``bm25/`` for hybrid search and
``senses/`` (word-occurrence vectors, ``ctxvec.index.senses``), and a manifest with the
factory string actually built (``auto`` resolved), metric, dim, count, model version, build
time, where it was built (``build_device``), the search parameters and the recall@10 measured
with them against exact search. With ``index.shards`` > 1 the dense index is one index per
corpus shard under ``shards/<k>/`` (``ctxvec.index.sharded``), the manifest lists them, and the
recall@10 is the merged index's. Everything is written into a staging folder and renamed into
place at the end.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow.parquet as pq

from ctxvec.artifacts import Embeddings, IndexArtifact
from ctxvec.config import CtxvecConfig
from ctxvec.embed.corpus import read_vectors
from ctxvec.embed.truncate import check_dim
from ctxvec.index.bm25 import BM25Index
from ctxvec.index.factory import build_index
from ctxvec.index.id_map import IDS_FILE, chunk_ids, chunk_metadata, id_map_table
from ctxvec.index.recall import recall_at_k
from ctxvec.index.senses import index_senses
from ctxvec.workspace import Workspace, read_json, write_manifest

log = logging.getLogger(__name__)


def run_index(cfg: CtxvecConfig, ws: Workspace, emb: Embeddings) -> IndexArtifact:
    started = time.time()
    icfg = cfg.index
    vectors, meta = read_vectors(emb.path)
    versions = set(meta.column("model_version").unique().to_pylist())
    if versions - {emb.model_version}:
        raise ValueError(f"embeddings mix model versions {sorted(versions)}: refusing to index")
    emb_manifest = read_json(Path(emb.path) / "manifest.json")
    corpus = emb_manifest["corpus"]  # as other machines name it (URIs in a remote workspace)
    local_corpus = [str(ws.local_dir(c)) for c in corpus]
    # embed.dim: vectors cut below the encoder's own dimension (model_dim) say so; a recipe
    # asking explicitly for another dimension than the embeddings hold is refused
    model_dim = int(emb_manifest.get("model_dim") or vectors.shape[1])
    if cfg.embed.dim is not None:
        check_dim(cfg.embed.dim, vectors.shape[1], model_dim, f"embeddings {emb.path}")

    # Ids, metadata and (for BM25) chunk texts: one pass over the corpus.
    doc_ids = meta.column("doc_id").to_pylist()
    ids = chunk_ids(doc_ids, meta.column("chunk").to_numpy())
    metadata, texts = chunk_metadata(
        local_corpus, doc_ids, meta.column("start").to_pylist(), meta.column("end").to_pylist(),
        icfg.metadata, with_text=icfg.bm25,
    )

    # The dense index, and its recall against exact search with the parameters it will serve.
    # index.backend, sharded when index.shards > 1 (``auto`` resolved per shard's size)
    t0 = time.perf_counter()
    index, shards = build_index(icfg, vectors, ids, doc_ids)
    build_s = time.perf_counter() - t0
    described, params = index.describe(), index.params()
    factory = described["factory"]
    recall = recall_at_k(index, vectors, ids, icfg.recall_sample)
    bm25, bm25_s = None, 0.0
    if texts is not None:
        t0 = time.perf_counter()
        bm25 = BM25Index.build(texts, ids)
        bm25_s = time.perf_counter() - t0

    final = ws.indexes / f"v{emb.model_version}"
    with ws.stage_dir(final) as tmp:
        index.save(tmp)
        pq.write_table(id_map_table(ids, meta, metadata), tmp / IDS_FILE)
        if bm25 is not None:
            bm25.save(tmp)
        # word-occurrence vectors (embed.words.enabled) get their sense index in senses/
        senses = index_senses(emb.path, tmp, icfg)
        write_manifest(
            tmp, "index", started, factory=factory, factory_requested=icfg.factory,
            metric="inner_product", dim=index.dim, count=index.count,
            model_version=emb.model_version, build_seconds=round(build_s, 3),
            recall_at_10=recall, recall_queries=min(icfg.recall_sample, index.count),
            nprobe=params.get("nprobe"), ef_search=params.get("ef_search"),
            train_sample=icfg.train_sample, build_device=described["build_device"], shards=shards,
            bm25=bm25 is not None, bm25_seconds=round(bm25_s, 3),
            metadata=list(icfg.metadata), id_scheme="blake2b-63(doc_id, chunk)",
            senses=senses["count"] if senses else None,
            embeddings=ws.uri_for(emb.path), corpus=corpus, max_tokens=emb_manifest["max_tokens"],
            pooling=emb_manifest.get("pooling"), precision=emb_manifest.get("precision"),
            model_dim=model_dim, quantize=icfg.quantize, rescore=params.get("rescore"),
        )
    log.info(
        "index: %s over %d vectors (dim %d) in %.1fs, recall@10 vs exact %.3f%s",
        factory, index.count, index.dim, build_s, recall, ", with BM25" if bm25 else "",
    )
    return IndexArtifact(str(final), factory, index.count, index.dim, recall,
                         emb.model_version)
