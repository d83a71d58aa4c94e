"""``GET /``: the web page (search, senses, attention), served without an API key; the page asks
for the key itself when the server has one."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from ctxvec.serve.context import Context

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index_page(ctx: Context) -> HTMLResponse:
    return HTMLResponse(ctx.page)
