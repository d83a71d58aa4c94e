"""What ``ctxvec serve`` needs beyond the pipeline: the ``serve`` extra, checked before it starts.

``pip install ctxvec`` (and ``make demo``) installs the pipeline only; the HTTP server's own
packages come with ``pip install 'ctxvec[serve]'``: uvicorn's C HTTP parser (httptools, which
the connection limits of ``ctxvec.serve.protocol`` are built on) and event loop (uvloop), and
prometheus-client for ``GET /metrics``. Prefect brings uvicorn and prometheus-client by itself,
so without the extra the server would start, only slower; this check says what is missing
instead. It imports nothing: the CLI runs it before loading a model.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec

from ctxvec.errors import UserInputError

__all__ = ["INSTALL_HINT", "ServeExtraMissingError", "missing_serve_modules",
           "require_serve_extra"]

INSTALL_HINT = "pip install 'ctxvec[serve]'"
# module -> the distribution that installs it (pyproject.toml's `serve` extra)
SERVE_MODULES = {"uvicorn": "uvicorn", "httptools": "httptools", "uvloop": "uvloop",
                 "prometheus_client": "prometheus-client"}


class ServeExtraMissingError(UserInputError):
    """``ctxvec serve`` without the ``serve`` extra."""


def missing_serve_modules() -> list[str]:
    """The distributions of the ``serve`` extra that are not installed here."""
    needed = {m: d for m, d in SERVE_MODULES.items()
              if not (m == "uvloop" and sys.platform == "win32")}  # uvloop has no Windows build
    return [dist for module, dist in needed.items() if find_spec(module) is None]


def require_serve_extra() -> None:
    missing = missing_serve_modules()
    if missing:
        raise ServeExtraMissingError(
            f"ctxvec serve needs the serve extra ({', '.join(missing)} missing): {INSTALL_HINT} "
            "(from a checkout: pip install -e '.[serve]')")
