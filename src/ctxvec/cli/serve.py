"""``ctxvec serve``: the champion over HTTP (FastAPI + uvicorn, one worker)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer

from ctxvec.cli._common import command, load_recipe, set_opt, workspace


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _uvicorn_log_config() -> dict:
    """uvicorn's own logging, with its access log on stderr too (stdout is for results)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG  # lazy: keep start-up fast (uvicorn)

    conf = copy.deepcopy(LOGGING_CONFIG)
    for handler in conf["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    return conf


@command
def serve(
    host: Annotated[str | None, typer.Option(help=r"Bind address \[default: serve.host, "
                    "127.0.0.1]; anything but loopback should come with an API key.")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help=r"Port \[default: "
                    "serve.port, 8000].")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Registry reference to serve; an alias is followed as it moves "
        r"\[default: the champion of registry.model_name].")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help=r"Require this key in the X-API-Key header \[default: the variable "
        "serve.api_key_env names, CTXVEC_API_KEY; unset: no key].")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Recipe YAML (its "
                      "serve and registry sections are used).")] = None,
    set_: Annotated[list[str] | None, set_opt("serve.max_batch=32")] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log",
                                             help="Log every request on stderr.")] = True,
) -> None:
    """Serve the champion over HTTP (FastAPI + uvicorn, one worker): POST /search, /embed,
    /senses, GET /health, /models, the web page at / and the schema at /openapi.json. A new
    champion is picked up without dropping requests."""
    # lazy: keep start-up fast (uvicorn, fastapi, torch, faiss, mlflow)
    import uvicorn

    from ctxvec.serve.app import create_app
    from ctxvec.serve.resolve import indexed_ref

    cfg = load_recipe(config, set_)
    host = host or cfg.serve.host
    port = port or cfg.serve.port
    ref = indexed_ref(model, cfg.registry.model_name)
    key = api_key or os.environ.get(cfg.serve.api_key_env) or None
    if not key and not _is_loopback(host):
        typer.echo(f"warning: serving on {host} without an API key: anyone who reaches this "
                   f"port can query the index; set {cfg.serve.api_key_env} or pass --api-key",
                   err=True)
    application = create_app(workspace(), cfg, ref, api_key=key)
    uvicorn.run(application, host=host, port=port, workers=1, access_log=access_log,
                log_config=_uvicorn_log_config())
