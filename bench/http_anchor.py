"""The anchor for bench/http_load.py: the search server a competent user writes without ctxvec.

FastAPI + uvicorn (httptools, uvloop: what `ctxvec serve` runs on too) + sentence-transformers +
FAISS, on the same index file, the same model folder and the same query window as the served
ctxvec version, answering the same `POST /search {"text", "k"}` with k documents (the best
chunk of each: chunks searched 4k deep, folded by document, searched 4x deeper while that
finds fewer than k documents, as ctxvec does). A plain endpoint: each request encodes its own
query (`SentenceTransformer.encode`) and searches the index, in FastAPI's thread pool; no
micro-batching, which is the point of comparison. Precision: bf16 autocast where the CPU has
bf16 units (what ctxvec's `precision: auto` picks), fp32 otherwise.
Hits carry doc_id, score and chunk id (not the snippet text ctxvec returns: less work for the
anchor, so the comparison does not flatter ctxvec).

    python bench/http_anchor.py --home WORKSPACE --port PORT [--threads N]
"""

# no ``from __future__ import annotations``: FastAPI must see the request model class of the
# endpoint defined inside create_app, not a string it cannot resolve
import argparse
import json
import os
from pathlib import Path

import numpy as np


def create_app(home: Path, threads: int | None):
    import faiss
    import pyarrow.parquet as pq
    import torch
    from fastapi import FastAPI
    from pydantic import BaseModel
    from sentence_transformers import SentenceTransformer

    from ctxvec.model.encoder import cpu_has_bf16

    info = json.loads((home / "bench.json").read_text())
    index_dir = Path(info["index"])
    manifest = json.loads((index_dir / "manifest.json").read_text())
    if threads:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    # the registered minilm, as the registry downloaded it (its shallowest config.json)
    model_dir = min((home / "cache").rglob("config.json"), key=lambda p: len(p.parts)).parent
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = int(manifest["max_tokens"])
    bf16 = cpu_has_bf16()
    index = faiss.read_index(str(index_dir / "index.faiss"))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = int(os.environ.get("ANCHOR_NPROBE", "32"))
    ids = pq.read_table(index_dir / "ids.parquet", columns=["id", "doc_id", "chunk"])
    id_sorted = ids.column("id").to_numpy()
    order = np.argsort(id_sorted)
    id_sorted = id_sorted[order]
    doc_ids = np.asarray(ids.column("doc_id").to_pylist(), dtype=object)[order]
    chunks = ids.column("chunk").to_numpy()[order]

    class Query(BaseModel):
        text: str
        k: int = 10

    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "index_count": int(index.ntotal),
                "index": {"factory": info["factory"]}, "model_version": "anchor",
                "batching": {"jobs": 0, "batches": 0}}

    @app.post("/search")
    def search(q: Query) -> dict:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            vec = model.encode([q.text], normalize_embeddings=True, convert_to_numpy=True)
        vec = np.asarray(vec, dtype=np.float32)
        depth = 4 * q.k
        while True:  # deeper while the chunks found cover fewer than k documents
            scores, labels = index.search(vec, depth)
            hits, seen = [], set()
            for s, i in zip(scores[0], labels[0], strict=True):
                if i < 0:
                    continue
                row = int(np.searchsorted(id_sorted, i))
                d = doc_ids[row]
                if d not in seen:
                    seen.add(d)
                    hits.append({"doc_id": d, "score": float(s), "chunk": int(chunks[row])})
                if len(hits) == q.k:
                    return {"hits": hits}
            if depth >= index.ntotal or (labels[0] < 0).any():
                return {"hits": hits}
            depth *= 4

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    import uvicorn

    uvicorn.run(create_app(args.home, args.threads), host="127.0.0.1", port=args.port,
                access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
