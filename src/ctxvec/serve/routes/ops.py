"""``GET /health`` and ``GET /models``: what the server serves, and the versions it could.

``/health`` stays open with an API key configured (load balancers probe it); ``/models`` reads
the registry through the app's one ``Registry``; the paths among its tags are shown relative to
the workspace.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from ctxvec.serve.context import Context
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
