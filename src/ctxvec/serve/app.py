"""The HTTP API and the web page: ``create_app(ws, cfg)`` -> a FastAPI app.

Endpoints: ``POST /search`` (text, id or vector), ``POST /embed``, ``POST /senses``,
``POST /explain`` (attention map, for the page), ``GET /health``, ``GET /models``, ``GET /`` (the
page) and the OpenAPI schema at ``/openapi.json`` (browsable at ``/docs``).

- It serves one alias (``champion`` by default) and follows it: see ``champion.ChampionWatcher``.
- Text queries and ``/embed`` go through a micro-batcher (``batcher.MicroBatcher``), so the event
  loop never runs the encoder and concurrent queries share forward passes and index scans.
- Every error, ours or FastAPI's, has one JSON shape, ``{"error": {"type", "message"}}``, with a
  4xx status for input the caller can fix; an unexpected failure is logged and answered with a
  500 in the same shape; none of them stops the server.
- With an API key configured, every endpoint but ``GET /`` and ``/health`` needs ``X-API-Key``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ctxvec import __version__
from ctxvec.config import CtxvecConfig
from ctxvec.errors import UserInputError
from ctxvec.refs import ModelRef
from ctxvec.registry import Registry
from ctxvec.serve.batcher import BatcherClosed, MicroBatcher
from ctxvec.serve.champion import ChampionWatcher, Served, load_served
from ctxvec.serve.schemas import (
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    HealthResponse,
    ModelsResponse,
    SearchRequest,
    SearchResponse,
    SensesRequest,
    SensesResponse,
    VersionOut,
)
from ctxvec.workspace import Workspace

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
OPEN_PATHS = {"/health"}  # and GET / (the page, which then asks for the key)
MAX_BODY_BYTES = 8 << 20
_ERRORS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
           413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
           500: "internal_error", 503: "unavailable"}


class ApiError(Exception):
    """An error with its HTTP status, raised by the endpoints."""

    def __init__(self, status: int, message: str, type_: str | None = None):
        super().__init__(message)
        self.status = status
        self.type = type_ or _ERRORS.get(status, "error")
        self.message = message


def error_response(status: int, message: str, type_: str | None = None,
                   details: list[dict] | None = None, headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": type_ or _ERRORS.get(status, "error"), "message": message}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _user_error_status(e: UserInputError) -> int:
    """A word absent from the sense index, or an error that is also a LookupError (an unknown
    id), is a 404; other input the caller can fix is a 400."""
    from ctxvec.embed.words import WordError

    return 404 if isinstance(e, LookupError | WordError) else 400


def create_app(
    ws: Workspace,
    cfg: CtxvecConfig,
    ref: str | ModelRef | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """Load ``ref`` (default ``models:/<registry.model_name>@champion``) and build the app.

    Loading happens here, so that a missing champion fails before a server binds a port.
    ``api_key`` None means: the environment variable ``serve.api_key_env`` (unset: no key).
    """
    scfg = cfg.serve
    ref = ModelRef.parse(ref or ModelRef.registered(cfg.registry.model_name, alias="champion"))
    if api_key is None:
        api_key = os.environ.get(scfg.api_key_env) or None
    registry = Registry(ws)  # one client for the app: the watcher, the loads and /models
    watcher = ChampionWatcher(ws, ref, scfg.reload_seconds, registry=registry,
                              loader=functools.partial(load_served, cfg=cfg, registry=registry))
    batcher = MicroBatcher(scfg.max_batch)
    started = time.time()
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
        responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    )
    app.state.watcher = watcher
    app.state.batcher = batcher

    def served() -> Served:
        return watcher.current  # one read: this request's model, even if a swap follows

    def check_text(text: str, what: str = "text") -> None:
        if len(text) > scfg.max_text_chars:
            raise ApiError(413, f"{what} has {len(text)} characters; at most "
                           f"{scfg.max_text_chars} (serve.max_text_chars) are accepted")

    def check_k(k: int) -> None:
        if k > scfg.max_k:
            raise ApiError(422, f"k must be between 1 and {scfg.max_k} (serve.max_k), got {k}")

    async def wait(fut) -> Any:
        return await asyncio.wrap_future(fut)

    # --- endpoints ----------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.post("/search", response_model=SearchResponse, tags=["search"],
              responses={404: {"model": ErrorResponse}, 413: {"model": ErrorResponse}})
    async def search(req: SearchRequest) -> dict:
        """Nearest documents to a text, an indexed document id or a vector, best first.

        A text query returns the same hits as ``ctxvec query TEXT -k K --json``."""
        t0 = time.perf_counter()
        check_k(req.k)
        s = served()
        if req.text is not None:
            check_text(req.text)
            if req.hybrid:
                hits = await run_in_threadpool(s.searcher.search, req.text, req.k, req.filters,
                                               True)
            else:
                hits = await wait(batcher.search(s.searcher, req.text, req.k, req.filters))
        elif req.id is not None:
            check_text(req.id, "id")
            hits = await run_in_threadpool(s.searcher.search_id, req.id, req.k, req.filters)
        else:
            vec = np.asarray(req.vector, dtype=np.float32)
            dim = s.searcher.encoder.dim
            if vec.shape != (dim,):
                raise ApiError(400, f"vector has {vec.size} dimensions; model version "
                               f"{s.version} has {dim}")
            if not np.isfinite(vec).all():
                raise ApiError(400, "vector holds NaN or infinite values")
            hits = await wait(batcher.search_vector(s.searcher, vec, req.k, req.filters))
        return {"hits": [h.to_dict() for h in hits], "model_version": s.version,
                "took_ms": round((time.perf_counter() - t0) * 1000, 3)}

    @app.post("/embed", response_model=EmbedResponse, tags=["search"],
              responses={413: {"model": ErrorResponse}})
    async def embed(req: EmbedRequest) -> dict:
        """L2-normalised vectors of up to ``serve.max_batch`` texts, as queries are embedded."""
        if len(req.texts) > scfg.max_batch:
            raise ApiError(413, f"{len(req.texts)} texts; at most {scfg.max_batch} per request "
                           "(serve.max_batch)")
        for i, t in enumerate(req.texts):
            if not t.strip():
                raise ApiError(422, f"texts[{i}] is empty")
            check_text(t, f"texts[{i}]")
        s = served()
        vecs = await wait(batcher.embed(s.searcher, req.texts))
        return {"vectors": vecs.tolist(), "dim": int(vecs.shape[1]), "model_version": s.version}

    @app.post("/senses", response_model=SensesResponse, tags=["search"],
              responses={404: {"model": ErrorResponse}})
    async def senses(req: SensesRequest) -> dict:
        """Occurrences of ``word`` in the corpus used in the same sense as in ``context``."""
        t0 = time.perf_counter()
        check_k(req.k)
        check_text(req.context, "context")
        check_text(req.word, "word")
        s = served()
        if s.senses is None:
            raise ApiError(404, f"sense search is not available for version {s.version}: "
                           f"{s.senses_error}")
        hits = await run_in_threadpool(s.senses.senses, req.word, req.context, req.k)
        return {"hits": [h.to_dict() for h in hits], "model_version": s.version,
                "took_ms": round((time.perf_counter() - t0) * 1000, 3)}

    @app.post("/explain", response_model=ExplainResponse, tags=["explain"])
    async def explain(req: ExplainRequest) -> dict:
        """Attention weights of one layer (one head, or the mean of heads) over the text's
        first 64 tokens: what the page draws."""
        from ctxvec.model.attention import attention_map

        check_text(req.text)
        s = served()

        def run() -> dict:
            return attention_map(s.attention_encoder(), req.text, req.layer, req.head).to_dict()

        return {**await run_in_threadpool(run), "model_version": s.version}

    @app.get("/health", response_model=HealthResponse, tags=["ops"])
    async def health() -> dict:
        s = served()
        return {"status": "ok", "model_version": s.version, "ref": str(watcher.ref),
                "index_count": int(s.searcher.index.count), "dim": int(s.searcher.encoder.dim),
                "uptime_s": round(time.time() - started, 3), "loaded_at": s.loaded_at,
                "senses": s.senses is not None, "index": s.searcher.info(),
                "batching": batcher.stats.to_dict()}

    @app.get("/models", response_model=ModelsResponse, tags=["ops"])
    def models() -> dict:
        """Registered versions of the served model, newest first, with aliases and tags."""
        s = served()
        versions = [
            VersionOut(version=v.version, aliases=v.aliases, tags=v.tags,
                       has_index=bool(v.tags.get("index_uri")), serving=v.version == s.version)
            for v in registry.list_versions(watcher.name)
        ]
        return {"name": watcher.name, "serving": s.version, "versions": versions}

    # --- errors -------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.message, e.type)

    @app.exception_handler(UserInputError)
    async def _user_error(request: Request, e: UserInputError) -> JSONResponse:
        return error_response(_user_error_status(e), str(e))

    @app.exception_handler(BatcherClosed)
    async def _closed(request: Request, e: BatcherClosed) -> JSONResponse:
        return error_response(503, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in ctype:
            # FastAPI does not parse a body that is not declared JSON (CSRF protection)
            return error_response(415, f"send the body as JSON with the header Content-Type: "
                                  f"application/json (got {ctype or 'no content type'!r})")
        return validation_error_response(e.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        type_ = None
        if e.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif e.status_code == 400 and message == "There was an error parsing the body":
            message, type_ = "the body could not be read as JSON (is it UTF-8?)", "malformed_json"
        return error_response(e.status_code, message, type_, headers=getattr(e, "headers", None))

    # Outermost last: catch-all 500 -> body-size limit -> API key -> the routes.
    if api_key:
        app.add_middleware(ApiKeyMiddleware, key=api_key)
        _document_api_key(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(CatchAllMiddleware)
    return app


def validation_error_response(errors: Any) -> JSONResponse:
    """FastAPI's validation errors in our shape; malformed JSON is a 400, the rest 422."""
    details = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        details.append({"loc": loc, "msg": msg, "type": err.get("type", "")})
    if any(d["type"] == "json_invalid" for d in details):
        where = next(e for e in errors if e.get("type") == "json_invalid")
        pos = where.get("loc", ("body", "?"))[-1]
        ctx = (where.get("ctx") or {}).get("error", "")
        return error_response(400, f"malformed JSON at character {pos}: {ctx}".rstrip(": "),
                              "malformed_json")
    message = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
    return error_response(422, message or "invalid request", details=details)


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


def _error_body(status: int, message: str) -> dict:
    return {"error": {"type": _ERRORS.get(status, "error"), "message": message}}


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
            await _send_json(send, 413, _error_body(413, str(e)))
        except Exception:
            log.exception("serve: %s %s failed", scope.get("method"), scope.get("path"))
            if started:  # too late for a clean answer: let the server close the connection
                raise
            await _send_json(send, 500, _error_body(
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
                    await _send_json(send, 413, _error_body(
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
                await _send_json(send, 401, _error_body(
                    401, f"{what} API key: send it in the {API_KEY_HEADER} header"),
                    {"WWW-Authenticate": API_KEY_HEADER})
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _open(scope: Scope) -> bool:
        path = scope["path"]
        return path in OPEN_PATHS or (path == "/" and scope["method"] in ("GET", "HEAD"))

