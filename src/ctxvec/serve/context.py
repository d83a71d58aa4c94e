"""What every endpoint reads: the served version, the micro-batcher, the registry, the request
limits of ``serve.*`` and how server paths are shown, held once per app and handed to the routes
as a dependency.

The routes (``ctxvec.serve.routes``) take ``ctx: Context``; FastAPI fills it from the app's
state without a thread hop, and it adds nothing to the OpenAPI schema.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from ctxvec.config import ServeConfig
from ctxvec.registry import Registry
from ctxvec.serve.api_errors import ApiError
from ctxvec.serve.batcher import MicroBatcher
from ctxvec.serve.champion import ChampionWatcher, Served
from ctxvec.serve.metrics import ServeMetrics
from ctxvec.serve.paths import WorkspacePaths


@dataclass(frozen=True)
class ServeContext:
    limits: ServeConfig  # serve.max_k, max_text_chars, max_batch
    watcher: ChampionWatcher
    batcher: MicroBatcher
    registry: Registry  # one client for the app: the watcher, the loads and /models
    started: float  # time.time() when the app was built
    page: str  # the web page's HTML
    paths: WorkspacePaths  # workspace paths in answers: relative to the workspace
    metrics: ServeMetrics  # this app's Prometheus registry: GET /metrics

    def served(self) -> Served:
        return self.watcher.current  # one read: this request's model, even if a swap follows

    def check_text(self, text: str, what: str = "text") -> None:
        if len(text) > self.limits.max_text_chars:
            raise ApiError(413, f"{what} has {len(text)} characters; at most "
                           f"{self.limits.max_text_chars} (serve.max_text_chars) are accepted")

    @staticmethod
    def hit(hit: Any, served: Served) -> dict:
        """A search hit as the API shows it: its source file relative to the corpus."""
        return {**hit.to_dict(), "source": served.sources.shown(hit.source)}

    def check_k(self, k: int) -> None:
        if k > self.limits.max_k:
            raise ApiError(422, f"k must be between 1 and {self.limits.max_k} (serve.max_k), "
                           f"got {k}")


async def wait(fut: Future) -> Any:
    """Await a batcher's future without blocking the event loop."""
    return await asyncio.wrap_future(fut)


async def _context(request: Request) -> ServeContext:
    return request.app.state.ctx  # async: FastAPI runs a sync dependency in a thread


Context = Annotated[ServeContext, Depends(_context)]
