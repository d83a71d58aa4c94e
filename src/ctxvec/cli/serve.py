"""``ctxvec serve``: the champion over HTTP (FastAPI + uvicorn, one worker)."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path
from typing import Annotated

import typer

from ctxvec.cli._common import NO_RECIPE, UserError, command, load_recipe, set_opt, workspace
from ctxvec.serve.discovery import ServerRecord, announce, client_url
from ctxvec.serve.extra import require_serve_extra
from ctxvec.serve.hosts import is_loopback

_is_loopback = is_loopback  # the name tests and older callers use
STARTUP_FAILURE = 3  # uvicorn.run's exit code when the server could not start


def _uvicorn_log_config() -> dict:
    """uvicorn's own logging, with its access log on stderr too (stdout is for results)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG  # lazy: keep start-up fast (uvicorn)

    conf = copy.deepcopy(LOGGING_CONFIG)
    for handler in conf["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    return conf


def _read_key_file(path: Path) -> str:
    """The key in ``path`` (surrounding whitespace and the final newline dropped)."""
    try:
        key = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--api-key-file {path}: cannot read it ({e})") from None
    if not key:
        raise UserError(f"--api-key-file {path}: the file is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        typer.echo(f"warning: --api-key-file {path} can be read by other users: "
                   f"chmod 600 {path}", err=True)
    return key


def api_key_of(flag: str | None, key_file: Path | None, env_name: str) -> str | None:
    """The key to require: ``--api-key``, else ``--api-key-file``, else ``$env_name``; None: no
    key. A key given on the command line is in every user's process list (``ps``), so it comes
    with a warning."""
    if flag and key_file:
        raise UserError("give --api-key or --api-key-file, not both")
    if flag:
        typer.echo(f"warning: --api-key is visible to every user of this machine in the process "
                   f"list (ps); put the key in a file readable only by you and pass "
                   f"--api-key-file, or set {env_name}", err=True)
        return flag
    if key_file:
        return _read_key_file(key_file)
    return os.environ.get(env_name) or None


@command
def serve(
    host: Annotated[str | None, typer.Option(
        help="Bind address; anything but loopback should come with an API key.",
        show_default="serve.host, 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port.",
                                             show_default="serve.port, 8000")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Registry reference to serve; an alias is followed as it moves.",
        show_default="the champion of registry.model_name")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help="Require this key in the X-API-Key header. Visible to other users "
        "in the process list: prefer --api-key-file or the variable serve.api_key_env names.",
        show_default="$CTXVEC_API_KEY; unset: no key")] = None,
    api_key_file: Annotated[Path | None, typer.Option(
        "--api-key-file", help="Require the key this file holds (e.g. a secret mounted at "
        "/run/secrets/...) in the X-API-Key header.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Recipe YAML (its "
                      "serve and registry sections are used).", show_default=NO_RECIPE)] = None,
    set_: Annotated[list[str] | None, set_opt("serve.max_batch=32")] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log",
                                             help="Log every request on stderr.")] = True,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="CPU threads the encoder and the index search compute with "
        "(serve.threads).", show_default="serve.threads; null: the CPUs this process may use",
    )] = None,
) -> None:
    """Serve the champion over HTTP (FastAPI + uvicorn, one worker): POST /search, /embed,
    /senses, GET /health, /models, the web page at / and the schema at /openapi.json. A new
    champion is picked up without dropping requests. Bound to loopback, only the Host names
    localhost, 127.0.0.1 and [::1] are answered (serve.allowed_hosts)."""
    require_serve_extra()  # before anything loads: say which extra, not which import failed
    # lazy: keep start-up fast (uvicorn, fastapi, torch, faiss, mlflow)
    import uvicorn

    from ctxvec.serve.app import create_app
    from ctxvec.serve.protocol import server_config
    from ctxvec.serve.resolve import indexed_ref

    cfg = load_recipe(config, [*(set_ or []), *([f"serve.threads={threads}"] if threads else [])])
    host = host or cfg.serve.host
    port = port or cfg.serve.port
    key = api_key_of(api_key, api_key_file, cfg.serve.api_key_env)
    ref = indexed_ref(model, cfg.registry.model_name)
    if not key and not is_loopback(host):
        typer.echo(f"warning: serving on {host} without an API key: anyone who reaches this "
                   f"port can query the index; set {cfg.serve.api_key_env} or pass "
                   "--api-key-file", err=True)
    ws = workspace()
    application = create_app(ws, cfg, ref, api_key=key, bind_host=host)
    server = uvicorn.Server(server_config(application, host, port, cfg.serve,
                                          access_log=access_log,
                                          log_config=_uvicorn_log_config()))
    # ctxvec query on this workspace asks this server while it runs (ctxvec.serve.discovery)
    record = ServerRecord(
        url=client_url(host, port), pid=os.getpid(), host=socket.gethostname(), ref=str(ref),
        config=str(config.resolve()) if config else None,
        answers_as_recipe=all(s.strip().startswith("serve.") for s in set_ or []),
        api_key_env=cfg.serve.api_key_env if key else None, started=time.time())
    with announce(ws.root, record):
        server.run()
    if not server.started:  # e.g. the port is taken: uvicorn logged why
        raise SystemExit(STARTUP_FAILURE)
