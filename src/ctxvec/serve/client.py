"""Asking a running ``ctxvec serve`` what ``ctxvec query`` would otherwise compute itself.

``find_server`` picks a server of the workspace (``ctxvec.serve.discovery``) that gives the same
answer as loading the model here would: it serves the reference asked for (the champion, or the
pinned version it serves now), under the same recipe, and the caller has the key it wants. It
asks ``/health`` first, so a record whose server has gone is never used.

The answers are the HTTP API's (``POST /search``, ``/senses``), which are ``ctxvec query
--json``'s by contract; only ``source`` is shown relative to the corpus by the API, and is put
back as stored by the caller (``ctxvec.serve.paths.SourceNames.stored``).

Errors: a 4xx the caller could fix (an unknown document id, a bad filter key) is a
``ServerInputError`` (exit code 2, as in process); anything else (nothing listening, a 5xx, a
refused key, a reply that is not JSON) is ``ServerUnavailable``, and the caller computes the
answer itself. Standard library only: this runs before anything heavy is imported.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxvec.errors import UserInputError
from ctxvec.refs import ModelRef
from ctxvec.serve.discovery import ServerRecord, live_servers

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 2.0
QUERY_TIMEOUT_S = 60.0  # a busy server queues queries: wait rather than load a second copy
# 4xx answers that say nothing about the query, only that this server will not answer it
_NOT_OURS = {401, 403, 421, 429}
# the server is on this machine: never through an HTTP proxy the environment names
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerUnavailable(Exception):
    """No usable answer from the server: the caller loads the model and answers itself."""


class ServerInputError(UserInputError):
    """The server refused the query as the in-process search would (exit code 2)."""


@dataclass(frozen=True)
class ServerClient:
    record: ServerRecord
    api_key: str | None
    version: str  # the version it served when asked (/health)

    @property
    def url(self) -> str:
        return self.record.url

    def get(self, path: str) -> dict[str, Any]:
        return _call(self.url + path, self.api_key, None, QUERY_TIMEOUT_S)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _call(self.url + path, self.api_key, body, QUERY_TIMEOUT_S)


def _call(url: str, api_key: str | None, body: dict[str, Any] | None,
          timeout: float) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if api_key:
        headers["X-API-Key"] = api_key
    request = urllib.request.Request(url, data=data, headers=headers,
                                     method="POST" if body is not None else "GET")
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        message = _error_message(e)
        if 400 <= e.code < 500 and e.code not in _NOT_OURS:
            raise ServerInputError(message) from None
        raise ServerUnavailable(f"{url} answered HTTP {e.code}: {message}") from None
    except (OSError, ValueError) as e:  # refused, reset, timed out, not JSON
        raise ServerUnavailable(f"{url}: {e}") from None


def _error_message(e: urllib.error.HTTPError) -> str:
    """The message of the API's error shape ``{"error": {"type", "message"}}``."""
    try:
        return str(json.loads(e.read())["error"]["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return e.reason or f"HTTP {e.code}"


def _serves(record: ServerRecord, health: dict[str, Any], ref: ModelRef) -> bool:
    """Does the server answer for ``ref``: the same reference, or the version ``ref`` pins?"""
    if health.get("status") != "ok" or health.get("ref") != record.ref:
        return False
    if record.ref == str(ref):
        return True
    try:
        served = ModelRef.parse(record.ref)
    except UserInputError:
        return False
    return (ref.version is not None and served.name == ref.name
            and str(health.get("model_version")) == ref.version)


def find_server(root: Path, ref: ModelRef, config: Path | None) -> ServerClient | None:
    """A running server of the workspace at ``root`` that answers for ``ref`` under the
    recipe ``config`` (None: built-in defaults), asked and alive; None when there is none."""
    recipe = str(Path(config).resolve()) if config is not None else None
    for record in live_servers(root):
        if record.config != recipe or not record.answers_as_recipe:
            continue
        api_key = os.environ.get(record.api_key_env) if record.api_key_env else None
        if record.api_key_env and not api_key:
            log.info("query: the server at %s wants an API key: set %s to use it",
                     record.url, record.api_key_env)
            continue
        try:
            health = _call(record.url + "/health", None, None, HEALTH_TIMEOUT_S)
        except (ServerUnavailable, ServerInputError) as e:
            log.debug("query: server at %s not used: %s", record.url, e)
            continue
        if _serves(record, health, ref):
            return ServerClient(record, api_key, str(health.get("model_version")))
    return None
