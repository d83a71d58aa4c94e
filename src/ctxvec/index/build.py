"""``run_index``: an embeddings folder -> an index folder for exactly one model version.

The folder holds ``index.faiss``, ``ids.parquet`` (int64 id -> doc id, chunk, char offsets) and a
manifest with the factory string, metric, dim, count, model version, build time and the recall@10
measured against exact search.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctxvec.artifacts import Embeddings, IndexArtifact
from ctxvec.config import CtxvecConfig
from ctxvec.embed.corpus import read_vectors
from ctxvec.index.faiss_index import FaissIndex, recall_at_k
from ctxvec.workspace import Workspace, read_json, write_manifest

log = logging.getLogger(__name__)

IDS_FILE = "ids.parquet"


def run_index(cfg: CtxvecConfig, ws: Workspace, emb: Embeddings) -> IndexArtifact:
    started = time.time()
    vectors, meta = read_vectors(emb.path)
    versions = set(meta.column("model_version").unique().to_pylist())
    if versions != {emb.model_version}:
        raise ValueError(f"embeddings mix model versions {sorted(versions)}: refusing to index")
    ids = np.arange(len(vectors), dtype=np.int64)
    t0 = time.perf_counter()
    index = FaissIndex.build(vectors, ids, cfg.index.factory)
    build_s = time.perf_counter() - t0
    recall = recall_at_k(index, vectors, ids, cfg.index.recall_sample)
    emb_manifest = read_json(Path(emb.path) / "manifest.json")
    final = ws.indexes / f"v{emb.model_version}"
    with ws.stage_dir(final) as tmp:
        index.save(tmp)
        id_map = pa.table({"id": pa.array(ids)}).append_column("doc_id", meta.column("doc_id"))
        for col in ("chunk", "start", "end"):
            id_map = id_map.append_column(col, meta.column(col))
        pq.write_table(id_map, tmp / IDS_FILE)
        write_manifest(
            tmp, "index", started, factory=cfg.index.factory, metric="inner_product",
            dim=index.dim, count=index.count, model_version=emb.model_version,
            build_seconds=round(build_s, 3), recall_at_10=recall,
            embeddings=emb.path, corpus=emb_manifest["corpus"],
            max_tokens=emb_manifest["max_tokens"],
        )
    log.info(
        "index: %s over %d vectors (dim %d), recall@10 vs exact %.3f",
        cfg.index.factory, index.count, index.dim, recall,
    )
    return IndexArtifact(str(final), cfg.index.factory, index.count, index.dim, recall,
                         emb.model_version)
