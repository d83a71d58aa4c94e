"""``POST /search``, ``/embed`` and ``/senses``: neighbours and vectors from the served version.

Text queries and ``/embed`` go through the micro-batcher, so the event loop never runs the
encoder and concurrent requests share forward passes and index scans; hybrid, id and sense
queries run in the thread pool.
"""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ctxvec.serve.api_errors import ApiError
from ctxvec.serve.context import Context, wait
from ctxvec.serve.schemas import (
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
    SensesRequest,
    SensesResponse,
)

router = APIRouter()


@router.post("/search", response_model=SearchResponse, tags=["search"],
             responses={404: {"model": ErrorResponse}, 413: {"model": ErrorResponse}})
async def search(req: SearchRequest, ctx: Context) -> dict:
    """Nearest documents to a text, an indexed document id or a vector, best first.

    A text query returns the same hits as ``ctxvec query TEXT -k K --json``."""
    t0 = time.perf_counter()
    ctx.check_k(req.k)
    s = ctx.served()
    filters = req.filters  # a source as the API shows it is a trailing part of the stored path
    if req.text is not None:
        ctx.check_text(req.text)
        if req.hybrid:
            hits = await run_in_threadpool(s.searcher.search, req.text, req.k, filters, True)
        else:
            hits = await wait(ctx.batcher.search(s.searcher, req.text, req.k, filters))
    elif req.id is not None:
        ctx.check_text(req.id, "id")
        hits = await run_in_threadpool(s.searcher.search_id, req.id, req.k, filters)
    else:
        vec = np.asarray(req.vector, dtype=np.float32)
        dim = s.searcher.encoder.dim
        if vec.shape != (dim,):
            raise ApiError(400, f"vector has {vec.size} dimensions; model version "
                           f"{s.version} has {dim}")
        if not np.isfinite(vec).all():
            raise ApiError(400, "vector holds NaN or infinite values")
        hits = await wait(ctx.batcher.search_vector(s.searcher, vec, req.k, filters))
    return {"hits": [ctx.hit(h, s) for h in hits], "model_version": s.version,
            "took_ms": round((time.perf_counter() - t0) * 1000, 3)}


@router.post("/embed", response_model=EmbedResponse, tags=["search"],
             responses={413: {"model": ErrorResponse}})
async def embed(req: EmbedRequest, ctx: Context) -> dict:
    """L2-normalised vectors of up to ``serve.max_batch`` texts, as queries are embedded."""
    if len(req.texts) > ctx.limits.max_batch:
        raise ApiError(413, f"{len(req.texts)} texts; at most {ctx.limits.max_batch} per "
                       "request (serve.max_batch)")
    for i, t in enumerate(req.texts):
        if not t.strip():
            raise ApiError(422, f"texts[{i}] is empty")
        ctx.check_text(t, f"texts[{i}]")
    s = ctx.served()
    vecs = await wait(ctx.batcher.embed(s.searcher, req.texts))
    return {"vectors": vecs.tolist(), "dim": int(vecs.shape[1]), "model_version": s.version}


@router.post("/senses", response_model=SensesResponse, tags=["search"],
             responses={404: {"model": ErrorResponse}})
async def senses(req: SensesRequest, ctx: Context) -> dict:
    """Occurrences of ``word`` in the corpus used in the same sense as in ``context``."""
    t0 = time.perf_counter()
    ctx.check_k(req.k)
    ctx.check_text(req.context, "context")
    ctx.check_text(req.word, "word")
    s = ctx.served()
    if s.senses is None:
        raise ApiError(404, f"sense search is not available for version {s.version}: "
                       f"{s.senses_error}")
    hits = await run_in_threadpool(s.senses.senses, req.word, req.context, req.k)
    return {"hits": [h.to_dict() for h in hits], "model_version": s.version,
            "took_ms": round((time.perf_counter() - t0) * 1000, 3)}
