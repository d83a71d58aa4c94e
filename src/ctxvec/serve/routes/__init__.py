"""The HTTP endpoints, one module per group, each an ``APIRouter`` over ``ServeContext``.

- ``page``: ``GET /`` (the web page, outside the schema);
- ``search``: ``POST /search``, ``/embed``, ``/senses``;
- ``explain``: ``POST /explain`` (attention maps, for the page);
- ``ops``: ``GET /health``, ``/models``, ``/metrics``.

A new endpoint goes in its group's module, with its bodies in ``serve/schemas.py``; a new group
is a module here and one entry in ``ROUTERS``, whose order is the order ``/openapi.json`` lists.
"""

from __future__ import annotations

from ctxvec.serve.routes import explain, ops, page, search

ROUTERS = (page.router, search.router, explain.router, ops.router)

__all__ = ["ROUTERS"]
