"""Which ``Host`` header values the server answers: a guard against DNS rebinding.

A server on 127.0.0.1 is out of reach of other machines, but not of a web page in the user's own
browser: a page on ``evil.example`` can make its name resolve to 127.0.0.1 a moment later
(DNS rebinding), and the browser then lets its scripts read this server's answers, since to the
browser they come from ``evil.example``. The request still says ``Host: evil.example:8000``, so a
server bound to loopback answers only the loopback names (``localhost``, ``127.0.0.1``,
``[::1]``, with any port: an SSH tunnel may forward another one) and refuses every other name, or
none, with a 421. ``serve.allowed_hosts`` replaces that list (for a proxy that forwards its own
Host), and ``["*"]`` turns the check off. Bound to another address, the server cannot know its
names: no check unless ``serve.allowed_hosts`` lists them.

This module imports nothing heavy: the CLI uses ``is_loopback`` before it loads the app.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
MISDIRECTED = 421


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind_host: str | None, configured: Iterable[str] | None) -> frozenset[str] | None:
    """The host names to answer, lower case, or None for any: ``configured`` when given
    (``*`` among them: any), else the loopback names when ``bind_host`` is loopback."""
    if configured is not None:
        names = frozenset(h.strip().lower() for h in configured)
        return None if "*" in names else names
    if bind_host is not None and is_loopback(bind_host):
        return frozenset(LOOPBACK_NAMES)
    return None


def host_name(header: str) -> str:
    """``Host`` without its port, lower case: ``[::1]:8000`` -> ``[::1]``; '' when malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1:]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return ""
        return value[:end + 1]
    name, _, port = value.partition(":")
    return name if not port or port.isdigit() else ""


class HostCheckMiddleware:
    """421 ``misdirected_request`` for a ``Host`` header (or its absence) not in ``allowed``."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == b"host"), None)
            name = host_name(given.decode("latin-1")) if given is not None else ""
            if name not in self.allowed:
                await self._refuse(send, given)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, given: bytes | None) -> None:
        what = f"Host {given.decode('latin-1')[:100]!r}" if given is not None else "no Host"
        names = ", ".join(sorted(self.allowed))
        body = json.dumps({"error": {
            "type": "misdirected_request",
            "message": f"{what}: this server answers only the Host names {names} "
                       "(serve.allowed_hosts)"}}).encode()
        await send({"type": "http.response.start", "status": MISDIRECTED, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})
