"""The one error shape of the HTTP API, ``{"error": {"type", "message"}}``, and the handlers that
give every error (ours, the library's, FastAPI's) that shape.

Input the caller can fix is a 4xx (a ``UserInputError`` from the library: 400, or 404 for an
unknown id or word); a closed batcher (the server is stopping) is a 503. Unexpected failures are
the catch-all middleware's (``ctxvec.serve.app``). Messages name workspace folders relative to
the workspace (``install_error_handlers``'s ``scrub``), and text that is not Unicode (a lone
surrogate echoed back) is escaped, so that writing an error never fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ctxvec.embed.words import WordError
from ctxvec.errors import UserInputError
from ctxvec.serve.batcher import BatcherClosed

ERROR_TYPES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
               405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large",
               415: "unsupported_media_type", 421: "misdirected_request",
               422: "validation_error", 431: "request_header_fields_too_large",
               500: "internal_error", 503: "unavailable"}


class ApiError(Exception):
    """An error with its HTTP status, raised by the endpoints."""

    def __init__(self, status: int, message: str, type_: str | None = None):
        super().__init__(message)
        self.status = status
        self.type = type_ or ERROR_TYPES.get(status, "error")
        self.message = message


def printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry (lone surrogates) as backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(status: int, message: str) -> dict:
    return {"error": {"type": ERROR_TYPES.get(status, "error"), "message": printable(message)}}


def error_response(status: int, message: str, type_: str | None = None,
                   details: list[dict] | None = None, headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": type_ or ERROR_TYPES.get(status, "error"),
                            "message": printable(message)}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def user_error_status(e: UserInputError) -> int:
    """A word absent from the sense index, or an error that is also a LookupError (an unknown
    id), is a 404; other input the caller can fix is a 400."""
    return 404 if isinstance(e, LookupError | WordError) else 400


def validation_error_response(errors: Any) -> JSONResponse:
    """FastAPI's validation errors in our shape; malformed JSON is a 400, the rest 422."""
    details = []
    for err in errors:
        loc = printable(".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body")
        msg = printable(str(err.get("msg", "invalid")).removeprefix("Value error, "))
        details.append({"loc": loc, "msg": msg, "type": err.get("type", "")})
    if any(d["type"] == "json_invalid" for d in details):
        where = next(e for e in errors if e.get("type") == "json_invalid")
        pos = where.get("loc", ("body", "?"))[-1]
        ctx = (where.get("ctx") or {}).get("error", "")
        return error_response(400, f"malformed JSON at character {pos}: {ctx}".rstrip(": "),
                              "malformed_json")
    message = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
    return error_response(422, message or "invalid request", details=details)


def _scrub(request: Request, message: str) -> str:
    scrub: Callable[[str], str] | None = getattr(request.app.state, "scrub", None)
    return scrub(message) if scrub else message


async def _api_error(request: Request, e: ApiError) -> JSONResponse:
    return error_response(e.status, _scrub(request, e.message), e.type)


async def _user_error(request: Request, e: UserInputError) -> JSONResponse:
    return error_response(user_error_status(e), _scrub(request, str(e)))


async def _closed(request: Request, e: BatcherClosed) -> JSONResponse:
    return error_response(503, str(e))


async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    ctype = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in ctype:
        # FastAPI does not parse a body that is not declared JSON (CSRF protection)
        return error_response(415, f"send the body as JSON with the header Content-Type: "
                              f"application/json (got {ctype or 'no content type'!r})")
    return validation_error_response(e.errors())


async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    message = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
    type_ = None
    if e.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif e.status_code == 400 and message == "There was an error parsing the body":
        message, type_ = "the body could not be read as JSON (is it UTF-8?)", "malformed_json"
    return error_response(e.status_code, message, type_, headers=getattr(e, "headers", None))


def install_error_handlers(app: FastAPI, scrub: Callable[[str], str] | None = None) -> None:
    """Answer every error the routes and FastAPI raise in the one JSON shape; ``scrub``
    rewrites the messages of ours and the library's (server paths out)."""
    app.state.scrub = scrub
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(UserInputError, _user_error)
    app.add_exception_handler(BatcherClosed, _closed)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
