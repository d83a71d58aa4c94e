"""The HTTP API and the web page: ``create_app(ws, cfg)`` -> a FastAPI app.

Endpoints: ``POST /search`` (text, id or vector), ``POST /embed``, ``POST /senses``,
``POST /explain`` (attention map, for the page), ``GET /health``, ``GET /models``,
``GET /metrics`` (Prometheus: ``ctxvec.serve.metrics``), ``GET /`` (the page) and the OpenAPI
schema at ``/openapi.json`` (browsable at ``/docs``). The endpoints live in
``ctxvec.serve.routes`` (one router per group) and read ``ServeContext``; this module assembles
them with the error handlers (``api_errors``) and the middleware below.

- It serves one alias (``champion`` by default) and follows it: see ``champion.ChampionWatcher``.
- Text queries and ``/embed`` go through a micro-batcher (``batcher.MicroBatcher``), so the event
  loop never runs the encoder and concurrent queries share forward passes and index scans.
- Every error, ours or FastAPI's, has one JSON shape, ``{"error": {"type", "message"}}``, with a
  4xx status for input the caller can fix; an unexpected failure is logged and answered with a
  500 in the same shape; none of them stops the server.
- With an API key configured, every endpoint but ``GET /`` and ``/health`` needs ``X-API-Key``.
- Bound to loopback (``bind_host``), it answers only the loopback Host names: ``hosts``.
- Answers name server files relative to the workspace or the corpus: ``paths``.

The connection limits (header size, header and body deadlines, idle connections) are the HTTP
protocol's, below the app: ``ctxvec.serve.protocol``.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ctxvec import __version__
from ctxvec.config import CtxvecConfig
from ctxvec.embed.threads import apply_threads, use_threads
from ctxvec.refs import ModelRef
from ctxvec.registry import Registry
from ctxvec.serve.api_errors import (
    ApiError,
    error_body,
    error_response,
    install_error_handlers,
    validation_error_response,
)
from ctxvec.serve.batcher import MicroBatcher
from ctxvec.serve.champion import ChampionWatcher, load_served
from ctxvec.serve.context import ServeContext
from ctxvec.serve.hosts import HostCheckMiddleware, allowed_hosts
from ctxvec.serve.metrics import MetricsMiddleware, ServeMetrics
from ctxvec.serve.paths import WorkspacePaths
from ctxvec.serve.routes import ROUTERS
from ctxvec.serve.schemas import ErrorResponse
from ctxvec.workspace import Workspace

__all__ = ["ApiError", "create_app", "error_response", "validation_error_response"]

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
OPEN_PATHS = {"/health"}  # and GET / (the page, which then asks for the key)
MAX_BODY_BYTES = 8 << 20


def create_app(
    ws: Workspace,
    cfg: CtxvecConfig,
    ref: str | ModelRef | None = None,
    api_key: str | None = None,
    bind_host: str | None = None,
) -> FastAPI:
    """Load ``ref`` (default ``models:/<registry.model_name>@champion``) and build the app.

    Loading happens here, so that a missing champion fails before a server binds a port.
    ``api_key`` None means: the environment variable ``serve.api_key_env`` (unset: no key).
    ``bind_host``: the address the server binds, which decides the Host names answered
    (``serve.allowed_hosts``, else the loopback names on a loopback bind; None: any).
    """
    scfg = cfg.serve
    ref = ModelRef.parse(ref or ModelRef.registered(cfg.registry.model_name, alias="champion"))
    if api_key is None:
        api_key = os.environ.get(scfg.api_key_env) or None
    # serve.threads, before the encoder loads (torch's inter-op threads can be set only then)
    threads = use_threads(scfg.threads, "serve.threads", "serve")
    registry = Registry(ws)  # one client for the app: the watcher, the loads and /models
    watcher = ChampionWatcher(ws, ref, scfg.reload_seconds, registry=registry,
                              loader=functools.partial(load_served, cfg=cfg, registry=registry))
    # the batcher's thread runs the encoder and the index search: the same count there
    batcher = MicroBatcher(scfg.max_batch,
                           thread_init=functools.partial(apply_threads, threads.count))
    metrics = ServeMetrics(watcher, batcher.stats)  # a registry of this app's own
    batcher.on_batch = metrics.observe_batch
    started = time.time()
    hosts = allowed_hosts(bind_host, scfg.allowed_hosts)
    page = resources.files("ctxvec.serve").joinpath("static/index.html").read_text("utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        watcher.start()
        try:
            yield
        finally:
            watcher.stop()
            batcher.close()

    app = FastAPI(
        title="ctxvec",
        version=__version__,
        description="Nearest-neighbour search over a corpus embedded by the champion encoder. "
        "Errors have the shape {\"error\": {\"type\", \"message\"}}."
        + (f" Every endpoint but GET / and /health needs the header {API_KEY_HEADER}."
           if api_key else ""),
        lifespan=lifespan,
        responses=_error_responses(hosts is not None),
    )
    app.state.watcher = watcher
    app.state.batcher = batcher
    paths = WorkspacePaths(ws)
    app.state.ctx = ServeContext(scfg, watcher, batcher, registry, started, page, paths, metrics)
    for router in ROUTERS:  # the endpoints: ctxvec.serve.routes
        app.include_router(router)
    install_error_handlers(app, scrub=paths.scrub)

    # Outermost last: metrics -> catch-all 500 -> Host check -> body-size limit -> API key ->
    # the routes (so refused requests and 500s are counted too).
    if api_key:
        app.add_middleware(ApiKeyMiddleware, key=api_key)
        _document_api_key(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    if hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed=hosts)
    app.add_middleware(CatchAllMiddleware)
    route_paths = {r.path for router in ROUTERS for r in router.routes}
    route_paths |= {u for u in (app.openapi_url, app.docs_url, app.redoc_url) if u}
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=frozenset(route_paths))
    return app


def _error_responses(host_check: bool) -> dict:
    """The errors any operation may answer, for the schema: bad input (400, 422), a body over
    MAX_BODY_BYTES (413) or not JSON (415), a server stopping or full (503), and a foreign Host
    header when the app checks it (421). Operations add their own (404, ...)."""
    statuses = [400, 413, 415, 422, 503] + ([421] if host_check else [])
    return {s: {"model": ErrorResponse} for s in sorted(statuses)}


def _document_api_key(app: FastAPI) -> None:
    """Declare the X-API-Key scheme in the OpenAPI schema (the middleware enforces it)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}}
            for path, ops in schema.get("paths", {}).items():
                if path not in OPEN_PATHS:
                    for op in ops.values():
                        op["security"] = [{"ApiKey": []}]
                        op["responses"]["401"] = {
                            "description": f"No API key, or a wrong one, in {API_KEY_HEADER}",
                            "content": {"application/json": {"schema": {
                                "$ref": "#/components/schemas/ErrorResponse"}}}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- ASGI middleware (plain ASGI: cheaper per request than BaseHTTPMiddleware) ----------------


async def _send_json(send: Send, status: int, body: dict, headers: dict | None = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class CatchAllMiddleware:
    """Log an unexpected exception once and answer a JSON 500; the server goes on serving."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except _BodyTooLarge as e:
            if started:
                raise
            await _send_json(send, 413, error_body(413, str(e)))
        except ClientDisconnect:  # gone, or cut off by the protocol (a body that never came)
            log.debug("serve: %s %s: the client went away", scope.get("method"),
                      scope.get("path"))
        except Exception:
            log.exception("serve: %s %s failed", scope.get("method"), scope.get("path"))
            if started:  # too late for a clean answer: let the server close the connection
                raise
            await _send_json(send, 500, error_body(
                500, "internal error: the server logged the cause; the request can be retried"))


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``, declared (Content-Length) or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await _send_json(send, 413, error_body(
                        413, f"request body over {limit} bytes"))
                    return
        seen = 0

        async def receive_counting() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(f"request body over {limit} bytes")
            return message

        await self.app(scope, receive_counting, send)


class ApiKeyMiddleware:
    """Require ``X-API-Key`` everywhere except ``GET /`` and ``/health``."""

    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._open(scope):
            given = next((v for k, v in scope["headers"] if k == b"x-api-key"), b"")
            if not hmac.compare_digest(given, self.key):
                what = "a wrong" if given else "no"
                await _send_json(send, 401, error_body(
                    401, f"{what} API key: send it in the {API_KEY_HEADER} header"),
                    {"WWW-Authenticate": API_KEY_HEADER})
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _open(scope: Scope) -> bool:
        path = scope["path"]
        return path in OPEN_PATHS or (path == "/" and scope["method"] in ("GET", "HEAD"))

