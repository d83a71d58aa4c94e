"""The HTTP connection limits uvicorn lacks, and the uvicorn settings ``ctxvec serve`` runs with.

uvicorn's C parser (httptools, which makes 32 clients fill the micro-batcher's batches:
docs/benchmarks.md) takes headers of any size, and httptools grows a header value by
concatenation, so a 64 MB header costs quadratic time on the event loop: two of them stalled
``/health`` for 10 s. Nor does uvicorn time out a connection before its first answer: one that
connects and sends nothing, or drips a header a byte at a time, is held forever. Its own
``h11_max_incomplete_event_size`` guards only the slower pure-Python parser.

``guarded_protocol`` is uvicorn's httptools protocol with those limits added:

- the request line and headers may take ``serve.max_header_bytes`` bytes; past them the request
  gets a 431 (counted as bytes arrive, up to the blank line that ends them, and refused before
  the parser sees them, so an oversized header costs no parsing at all);
- they must arrive within ``serve.header_timeout_s`` of the request's first byte (or of the
  connection, for its first request): then a 408 (or, when nothing was sent, a silent close);
- a body must arrive within ``serve.body_timeout_s`` of its headers: then a 408.

A refused connection is closed gently: the answer is sent, the write side shut, and what the
client still sends is read and dropped for ``LINGER_S`` before the socket closes, so that the
client reads its 431 instead of a reset. Idle keep-alive connections close after
``serve.keep_alive_s`` (uvicorn's own), and past ``serve.max_connections`` uvicorn answers 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from http import HTTPStatus
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ctxvec.config import ServeConfig

log = logging.getLogger(__name__)

LINGER_S = 2.0  # how long a refused connection's input is drained before the close
_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line that ends a request's headers


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit and header and body deadlines.
    The limits are class attributes: ``guarded_protocol`` makes a subclass holding a config's."""

    max_header_bytes = 32_768
    header_timeout_s = 10.0
    body_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request line and headers (or waiting for one)
        self._head_bytes = 0
        self._tail = b""  # the last bytes of the head so far: its end may straddle two reads
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    # --- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # drained and dropped until the close
        if self._in_head:
            if self._timer is None:  # the first byte of a request on a kept-alive connection
                self._arm(self.header_timeout_s, self._head_timed_out)
            buf = self._tail + data
            end = _HEAD_END.search(buf)
            self._head_bytes += end.end() - len(self._tail) if end else len(data)
            self._tail = b"" if end else buf[-2:]
            if self._head_bytes > self.max_header_bytes:  # refused before the parser sees it
                self._refuse(431, f"the request line and headers are over "
                             f"{self.max_header_bytes} bytes (serve.max_header_bytes)",
                             "request_header_fields_too_large", answer=not self._in_flight())
                return
        super().data_received(data)

    # --- parser callbacks -------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._in_head, self._head_bytes, self._tail = False, 0, b""
        self._arm(self.body_timeout_s, self._body_timed_out)  # disarmed when the body is in

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._tail = True, 0, b""
        self._disarm()  # the next request's deadline starts with its first byte

    # --- deadlines --------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _in_flight(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._in_flight():  # a pipelined request waits behind an answer: not the client's fault
            self._arm(self.header_timeout_s, self._head_timed_out)
            return
        if self._head_bytes == 0:  # connected (or kept alive) and never asked anything
            self.transport.close()
            return
        self._refuse(408, f"the request line and headers did not arrive within "
                     f"{self.header_timeout_s:g} s (serve.header_timeout_s)", "request_timeout",
                     answer=True)

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        self._refuse(408, f"the request body did not arrive within {self.body_timeout_s:g} s "
                     "(serve.body_timeout_s)", "request_timeout",
                     answer=self.cycle is None or not self.cycle.response_started)

    # --- refusing a connection --------------------------------------------------------------

    def _refuse(self, status: int, message: str, type_: str, answer: bool) -> None:
        """Stop the request in progress, send ``status`` if ``answer``, and close after
        draining the client's input for ``LINGER_S``."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._disarm()
        client = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
        self.logger.warning("%s%s", client, message)
        if self._in_flight():  # as if the client had gone: the app reads a disconnect and
            self.cycle.disconnected = True  # what it still sends is dropped
            self.cycle.message_event.set()
        if answer:
            self.transport.write(_response(status, message, type_))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER_S, self.transport.close)


def _response(status: int, message: str, type_: str) -> bytes:
    body = json.dumps({"error": {"type": type_, "message": message}}).encode()
    phrase = HTTPStatus(status).phrase
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def guarded_protocol(scfg: ServeConfig) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with ``scfg``'s limits (uvicorn instantiates it per connection)."""
    return type("ServeHttpProtocol", (GuardedHttpToolsProtocol,), {
        "max_header_bytes": scfg.max_header_bytes,
        "header_timeout_s": scfg.header_timeout_s,
        "body_timeout_s": scfg.body_timeout_s,
    })


def server_config(app: Any, host: str, port: int, scfg: ServeConfig, **kwargs: Any
                  ) -> uvicorn.Config:
    """The uvicorn settings of ``ctxvec serve`` (one worker, no WebSockets); ``kwargs`` go to
    ``uvicorn.Config`` as they are (access_log, log_config, log_level, ...)."""
    return uvicorn.Config(
        app, host=host, port=port, workers=1, http=guarded_protocol(scfg), ws="none",
        timeout_keep_alive=scfg.keep_alive_s, limit_concurrency=scfg.max_connections, **kwargs)
