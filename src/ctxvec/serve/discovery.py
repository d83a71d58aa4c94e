"""Which ``ctxvec serve`` processes are running on a workspace, so that ``ctxvec query`` can ask
one of them instead of loading the model and the index itself.

A query in a fresh process spends seconds importing torch, faiss and mlflow and loading the
encoder and the index; a running server has all of that in memory and answers in milliseconds.
So ``ctxvec serve`` announces itself: while it runs, ``<workspace>/servers/<pid>.json`` holds
its URL, its pid and host, the reference it serves, the recipe it was started with and whether
it wants an API key (never the key). The file is removed when the server stops; one left by a
killed server is ignored (its pid is gone) and removed by the next ``ctxvec serve``.

A reader never trusts a record alone: ``ctxvec.serve.client`` asks the server's ``/health``
before sending a query, and falls back to loading the model itself when nothing answers.

This module imports nothing heavy: ``ctxvec query`` reads it before deciding what to load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

log = logging.getLogger(__name__)

SERVERS_DIR = "servers"
HOME_ENV, DEFAULT_HOME = "CTXVEC_HOME", ".ctxvec"  # as ctxvec.workspace reads them


def local_home() -> Path | None:
    """The folder ``$CTXVEC_HOME`` names, resolved as ``Workspace.from_env().root`` resolves it
    (without importing the workspace module, which loads pyarrow); None for a store URI, whose
    servers are not looked for."""
    home = os.environ.get(HOME_ENV, DEFAULT_HOME)
    if "://" in home:
        return None
    return Path(home).expanduser().resolve()


@dataclass(frozen=True)
class ServerRecord:
    url: str  # where a client on this machine reaches it, e.g. http://127.0.0.1:8000
    pid: int
    host: str  # the machine it runs on (socket.gethostname())
    ref: str  # the reference it serves, e.g. models:/ctxvec-encoder@champion
    config: str | None  # the recipe it was started with (absolute path); None: built-in
    answers_as_recipe: bool  # no --set beyond serve.*: it answers as its recipe says
    api_key_env: str | None  # the variable a client reads the key from; None: no key needed
    started: float  # time.time() at start

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ServerRecord:
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to ``host``: a wildcard bind
    is reached on loopback (whose Host names a loopback-bound server answers)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _records(root: Path) -> Iterator[tuple[Path, ServerRecord | None]]:
    """Every record file under ``root`` -> (file, record or None when unreadable)."""
    folder = Path(root) / SERVERS_DIR
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            yield path, ServerRecord.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.debug("serve: unreadable server record %s (%s)", path, e)
            yield path, None


def _running_here(record: ServerRecord | None) -> bool:
    return record is not None and record.host == socket.gethostname() and _alive(record.pid)


def live_servers(root: Path) -> list[ServerRecord]:
    """The servers of the workspace at ``root`` whose process still runs on this machine,
    newest first. Reads only: a record left behind by a killed server is skipped, not removed."""
    live = [r for _, r in _records(root) if _running_here(r)]
    return sorted(live, key=lambda r: -r.started)  # type: ignore[union-attr]


@contextlib.contextmanager
def announce(root: Path, record: ServerRecord) -> Iterator[Path | None]:
    """Hold ``<root>/servers/<pid>.json`` while the body runs (the server serves); records left
    by servers that are gone are removed first. Written whole (a rename), so a reader never
    sees half a record."""
    folder = Path(root) / SERVERS_DIR
    path = folder / f"{record.pid}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old, other in _records(root):
            if not _running_here(other) and (other is None or other.host == record.host):
                old.unlink(missing_ok=True)  # a killed server's, or unreadable
        tmp = folder / f".{record.pid}.json.tmp"
        tmp.write_text(record.to_json(), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:  # a read-only workspace: serve all the same, unannounced
        log.warning("serve: cannot write %s (%s): ctxvec query will not find this server",
                    path, e)
        yield None
        return
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
