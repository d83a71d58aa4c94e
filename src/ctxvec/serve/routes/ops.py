"""``GET /health``, ``GET /models`` and ``GET /metrics``: what the server serves, the versions it
could, and how it has been doing.

``/health`` stays open with an API key configured (load balancers probe it); ``/models`` reads
the registry through the app's one ``Registry``; the paths among its tags are shown relative to
the workspace. ``/metrics`` is the Prometheus exposition of the app's own registry
(``ctxvec.serve.metrics``); with an API key it needs the key like the others.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ctxvec.serve.context import Context
from ctxvec.serve.metrics import METRICS_MEDIA_TYPES
from ctxvec.serve.schemas import HealthResponse, ModelsResponse, VersionOut

router = APIRouter()


@router.get("/health", response_model=HealthResponse, tags=["ops"])
async def health(ctx: Context) -> dict:
    s = ctx.served()
    return {"status": "ok", "model_version": s.version, "ref": str(ctx.watcher.ref),
            "index_count": int(s.searcher.index.count), "dim": int(s.searcher.encoder.dim),
            "uptime_s": round(time.time() - ctx.started, 3), "loaded_at": s.loaded_at,
            "senses": s.senses is not None, "index": s.searcher.info(),
            "batching": ctx.batcher.stats.to_dict()}


@router.get("/models", response_model=ModelsResponse, tags=["ops"])
def models(ctx: Context) -> dict:
    """Registered versions of the served model, newest first, with aliases and tags."""
    s = ctx.served()
    versions = [
        VersionOut(version=v.version, aliases=v.aliases, tags=ctx.paths.tags(v.tags),
                   has_index=bool(v.tags.get("index_uri")), serving=v.version == s.version)
        for v in ctx.registry.list_versions(ctx.watcher.name)
    ]
    return {"name": ctx.watcher.name, "serving": s.version, "versions": versions}


@router.get("/metrics", tags=["ops"], response_class=Response, responses={200: {
    "description": "Prometheus metrics: requests, latency, micro-batch sizes, the served version",
    "content": {t: {"schema": {"type": "string"}} for t in METRICS_MEDIA_TYPES}}})
async def metrics(ctx: Context, request: Request) -> Response:
    """Request counts and latency by route, micro-batch sizes and the served model version, in
    the text format Prometheus scrapes (or OpenMetrics, when the Accept header asks for it)."""
    body, content_type = ctx.metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)
