"""``POST /explain``: the attention map the web page draws, from an eager copy of the served
encoder (``Served.attention_encoder``), so that concurrent queries keep the fast one."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ctxvec.model.attention import attention_map
from ctxvec.serve.context import Context
from ctxvec.serve.schemas import ExplainRequest, ExplainResponse

router = APIRouter()


@router.post("/explain", response_model=ExplainResponse, tags=["explain"])
async def explain(req: ExplainRequest, ctx: Context) -> dict:
    """Attention weights of one layer (one head, or the mean of heads) over the text's
    first 64 tokens: what the page draws."""
    ctx.check_text(req.text)
    s = ctx.served()

    def run() -> dict:
        return attention_map(s.attention_encoder(), req.text, req.layer, req.head).to_dict()

    return {**await run_in_threadpool(run), "model_version": s.version}
