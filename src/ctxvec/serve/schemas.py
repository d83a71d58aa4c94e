"""Request and response bodies of the HTTP API, as pydantic models.

They are what ``/openapi.json`` (and ``/docs``) document. Limits that come from the config
(``serve.max_k``, ``serve.max_text_chars``, ``serve.max_batch``) are checked by the endpoints, so
that one server's config can tighten them; the static bounds here are the outer ones.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# Outer bounds, whatever the config says: a request past them is malformed, not just too big.
MAX_K = 10_000
MAX_EMBED_TEXTS = 1024
MAX_VECTOR_DIM = 65_536


def _unicode_text(value: Any) -> Any:
    """Refuse a string holding a lone surrogate (JSON lets ``"\\udc80"`` through; it is no
    Unicode character, and the tokenizer fails on it): a 422 like any other bad field. Runs
    before pydantic's own string checks, so every text field says the same thing."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"holds a lone surrogate ({value[e.start]!r} at character "
                             f"{e.start}): not Unicode text") from None
    return value


Text = Annotated[str, BeforeValidator(_unicode_text)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Body):
    """Exactly one of ``text``, ``id`` (a document id of the index) or ``vector``."""

    text: Text | None = Field(None, description="Query text.", examples=["a football club"])
    id: Text | None = Field(None, description="Neighbours of this indexed document.")
    vector: list[float] | None = Field(
        None, max_length=MAX_VECTOR_DIM,
        description="A query vector of the model's dimension (L2-normalised like the index).",
    )
    k: int = Field(10, ge=1, le=MAX_K, description="Documents to return (at most serve.max_k).")
    filters: dict[Text, Text | list[Text]] | None = Field(
        None, description="Metadata filters (index.metadata keys): a value, or a list of "
        "accepted values, per key; e.g. {\"title\": \"Berw\"}.",
    )
    hybrid: bool = Field(False, description="Fuse dense and BM25 rankings (text queries only).")

    @model_validator(mode="after")
    def _exactly_one_query(self) -> SearchRequest:
        given = [n for n in ("text", "id", "vector") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of text, id or vector"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.text is not None and not self.text.strip():
            raise ValueError("text is empty")
        if self.hybrid and self.text is None:
            raise ValueError("hybrid search needs a text query")
        return self


class HitOut(BaseModel):
    doc_id: str
    score: float
    text: str = Field(description="The best-matching chunk of the document (a snippet).")
    title: str = ""
    chunk: int = 0
    start: int = Field(0, description="Character offset of the chunk in the document.")
    end: int = 0
    source: str | None = Field(None, description="The file the document was ingested from, "
                               "relative to the folder the corpus's files share.")


class SearchResponse(BaseModel):
    hits: list[HitOut] = Field(description="Best first.")
    model_version: str
    took_ms: float


class EmbedRequest(_Body):
    texts: list[Text] = Field(min_length=1, max_length=MAX_EMBED_TEXTS,
                             description="Texts to embed (at most serve.max_batch).")


class EmbedResponse(BaseModel):
    vectors: list[list[float]] = Field(description="L2-normalised, one per text, in order.")
    dim: int
    model_version: str


class SensesRequest(_Body):
    word: Text = Field(min_length=1, description="The word whose sense is wanted.",
                      examples=["bank"])
    context: Text = Field(min_length=1, description="A sentence that uses the word.",
                         examples=["She sat on the bank of the river."])
    k: int = Field(10, ge=1, le=MAX_K)


class SenseHitOut(BaseModel):
    doc_id: str
    score: float
    word: str
    start: int = Field(description="Character offset of the occurrence in the document.")
    end: int
    text: str = Field(description="A snippet of the document around the occurrence.")
    title: str = ""
    snippet_start: int = Field(
        0, description="Offset of `text` in the document: the word is text[start - "
        "snippet_start : end - snippet_start].")


class SensesResponse(BaseModel):
    hits: list[SenseHitOut]
    model_version: str
    took_ms: float


class ExplainRequest(_Body):
    text: Text = Field(min_length=1, examples=["I saw a saw."])
    layer: int = Field(-1, description="Transformer layer, counted from 0 (-1: the last).")
    head: int | None = Field(None, ge=0, description="Attention head (default: mean of heads).")


class ExplainResponse(BaseModel):
    tokens: list[str] = Field(description="At most 64 tokens, special tokens included.")
    weights: list[list[float]] = Field(description="(T, T): row i attends to column j.")
    layer: int = Field(description="The layer drawn, counted from 0.")
    head: int | str = Field(description="The head drawn, or 'mean'.")
    n_layers: int
    n_heads: int
    truncated: bool = Field(description="The text had more tokens than are shown.")
    model_version: str


class HealthResponse(BaseModel):
    status: str
    model_version: str
    ref: str
    index_count: int
    dim: int
    uptime_s: float
    loaded_at: float = Field(description="Unix time the served version was loaded.")
    index: dict = Field(description="The served index: factory, metric, count, recall@10, ...")
    batching: dict = Field(description="Micro-batcher counters since start.")
    senses: bool = Field(description="Whether /senses is available for this version.")


class VersionOut(BaseModel):
    version: str
    aliases: list[str]
    tags: dict[str, str]
    has_index: bool
    serving: bool


class ModelsResponse(BaseModel):
    name: str
    serving: str
    versions: list[VersionOut]


class ErrorDetail(BaseModel):
    type: str = Field(description="bad_request, validation_error, not_found, payload_too_large, "
                      "unauthorized, unavailable, internal_error, ...")
    message: str
    details: list[dict] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
