"""``ctxvec query`` (documents, or word senses with --word/--context) and ``ctxvec explain``
(attention heatmaps): reading a model and its index from the command line."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Annotated

import typer

from ctxvec.cli._common import (
    DEFAULT_MODEL_NAME,
    NO_RECIPE,
    JsonOpt,
    UserError,
    command,
    dump,
    format_hits,
    load_recipe,
    workspace,
)
from ctxvec.errors import UserInputError
from ctxvec.refs import ModelRef
from ctxvec.serve.client import ServerUnavailable, find_server
from ctxvec.serve.discovery import local_home

log = logging.getLogger(__name__)

# the champion of the default registered model, as --model's default text (a light import)
DEFAULT_CHAMPION = str(ModelRef.registered(DEFAULT_MODEL_NAME, alias="champion"))


def parse_filters(items: list[str] | None) -> dict[str, list[str]]:
    """``["source=wiki", "source=news", "title=Paris"]`` -> {"source": [...], "title": [...]}:
    one key repeated means any of its values; different keys must all match."""
    filters: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--filter {item!r} must look like KEY=VALUE, e.g. source=wiki_00")
        filters.setdefault(key.strip(), []).append(value)
    return filters


def _check_k(k: int) -> None:
    if k < 1:
        raise UserError(f"-k must be at least 1, got {k}")


ServerOpt = Annotated[bool, typer.Option(
    "--server/--no-server", help="Ask a running `ctxvec serve` of this workspace when it serves "
    "this model under this recipe (an answer in milliseconds, nothing loaded here); "
    "--no-server always loads the model and index in this process.")]


@command
def query(
    text: Annotated[str | None, typer.Argument(
        help="The text whose nearest neighbours you want (or use --id / --vector-file).")] = None,
    doc_id: Annotated[str | None, typer.Option(
        "--id", help="Neighbours of this indexed document (itself left out).")] = None,
    vector_file: Annotated[Path | None, typer.Option(
        "--vector-file", help="Neighbours of a vector: .npy of shape (D,) or (1, D), or a text "
        "file of D numbers.")] = None,
    word: Annotated[str | None, typer.Option(
        "--word", help="Sense search: the occurrences of this word used as in --context.")] = None,
    context: Annotated[str | None, typer.Option(
        "--context", help="Sense search: a sentence using --word in the sense you mean.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Number of documents to return.")] = 10,
    filter_: Annotated[list[str] | None, typer.Option(
        "--filter", metavar="KEY=VALUE", help="Only documents whose metadata match KEY=VALUE "
        "(source, title; repeatable: the same key twice means either value). A source matches "
        "by its path or any trailing part of it: source=wiki_00.gz.")] = None,
    hybrid: Annotated[bool, typer.Option(
        "--hybrid", help="TEXT only: fuse dense and BM25 rankings (reciprocal-rank fusion); "
        "scores are then fusion scores.")] = False,
    model: Annotated[str | None, typer.Option(
        "--model", help="Registry reference whose index serves the query.",
        show_default="the champion of the recipe's registry.model_name")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Recipe YAML whose index/query sections apply (mmap, device, "
        "rrf_k) and whose registry.model_name names the default model.",
        show_default=NO_RECIPE)] = None,
    server: ServerOpt = True,
    as_json: JsonOpt = False,
) -> str:
    """Nearest documents to TEXT, to an indexed document (--id) or to a vector (--vector-file),
    from the champion model and its own index; a running `ctxvec serve` of the workspace
    answers when it serves that model."""
    if word is not None or context is not None:  # sense search: word occurrences, not documents
        mixed = any(v for v in (text, doc_id, vector_file, filter_, hybrid))
        return _sense_query(word, context, k, model, config, as_json, mixed, server)
    given = [name for name, v in (("TEXT", text), ("--id", doc_id),
                                  ("--vector-file", vector_file)) if v is not None]
    if len(given) != 1:
        raise UserError("give exactly one of TEXT, --id DOC or --vector-file F"
                        + (f" (got {', '.join(given)})" if given else ""))
    if hybrid and text is None:
        raise UserError("--hybrid needs TEXT: BM25 ranks words, not vectors")
    _check_k(k)
    filters = parse_filters(filter_)
    vector = None
    if vector_file is not None:
        from ctxvec.serve.query_vector import read_query_vector  # lazy: numpy, not for --help

        vector = read_query_vector(vector_file)
    body: dict = {"k": k, "filters": filters or None, "hybrid": hybrid}
    if text is not None:
        body["text"] = text
    elif doc_id is not None:
        body["id"] = doc_id
    else:
        body["vector"] = vector.tolist()
    answer = ask_server(model, config, "/search", body) if server else None
    if answer is not None:
        hits = answer["hits"]
    else:
        hits = _search_here(model, config, body, vector)
    if as_json:
        return dump({"hits": hits})
    if not hits and filter_:  # every search finds something, unless the filters allow nothing
        return ("no hits: no indexed document matches " + " ".join(
            f"--filter {shlex.quote(f)}" for f in filter_) + " (a title matches exactly; a "
            "source by its path, file name or trailing folders: source=wiki_00.gz)")
    return format_hits(hits) if hits else "no hits"


def ask_server(model: str | None, config: Path | None, path: str, body: dict) -> dict | None:
    """The answer of a running ``ctxvec serve`` of this workspace that serves the model asked
    for under the same recipe (``ctxvec.serve.client``); None when there is none or it fails,
    and the caller answers itself. A source it shows relative to the corpus is put back as
    stored, as an answer computed here shows it."""
    root = local_home()
    if root is None:  # a workspace on an object store: servers are not looked for
        return None
    name = load_recipe(config, []).registry.model_name if config else DEFAULT_MODEL_NAME
    try:
        ref = ModelRef.parse(model) if model else ModelRef.registered(name, alias="champion")
    except UserInputError:
        return None  # the search here reports it
    client = find_server(root, ref, config) if ref.is_registry else None
    if client is None:
        return None
    try:
        answer = client.post(path, body)
        if path == "/search":
            _stored_sources(client, root, answer)
    except ServerUnavailable as e:
        log.info("query: %s; loading the model here instead", e)
        return None
    log.info("query: answered by ctxvec serve at %s (version %s, %.0f ms)", client.url,
             answer.get("model_version"), answer.get("took_ms", 0.0))
    return answer


def _stored_sources(client, root: Path, answer: dict) -> None:
    """Hits' ``source`` as stored (the server shows it relative to the served corpus)."""
    from ctxvec.serve.paths import SourceNames  # lazy: only when a server answered

    version = str(answer.get("model_version"))
    models = client.get("/models")
    index = next((v["tags"].get("index_uri") for v in models.get("versions", [])
                  if v.get("version") == version), None)
    if not index:
        return
    try:
        manifest = json.loads((root / index / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError):
        return
    names = SourceNames.of_corpus(c for c in manifest.get("corpus", []) if Path(c).is_dir())
    for hit in answer.get("hits", []):
        hit["source"] = names.stored(hit.get("source", ""))


def _search_here(model: str | None, config: Path | None, body: dict, vector) -> list[dict]:
    """The query answered in this process: load the model version and its index."""
    # lazy: keep start-up fast (torch, faiss, mlflow)
    from ctxvec.embed.threads import use_threads
    from ctxvec.serve.resolve import indexed_ref
    from ctxvec.serve.search import Searcher  # imports FAISS: use_threads sets its threads too

    cfg = load_recipe(config, [])
    use_threads(cfg.serve.threads, "serve.threads", "query")
    searcher = Searcher(workspace(), indexed_ref(model, cfg.registry.model_name), cfg)
    k, filters = body["k"], body["filters"]
    if "text" in body:
        found = searcher.search(body["text"], k, filters, hybrid=body["hybrid"])
    elif "id" in body:
        found = searcher.search_id(body["id"], k, filters)
    else:
        found = searcher.search_vector(vector, k, filters)
    return [h.to_dict() for h in found]


def _sense_query(word: str | None, context: str | None, k: int, model: str | None,
                 config: Path | None, as_json: bool, mixed: bool, server: bool) -> str:
    """``query --word W --context SENTENCE``: where else the corpus uses W as SENTENCE does,
    from the champion's sense index (``<index folder>/senses``)."""
    if word is None or context is None:
        raise UserError("sense search needs both --word W and --context SENTENCE")
    if mixed:
        raise UserError("--word/--context search word occurrences: leave out TEXT, --id, "
                        "--vector-file, --filter and --hybrid")
    _check_k(k)
    body = {"word": word, "context": context, "k": k}
    answer = ask_server(model, config, "/senses", body) if server else None
    if answer is not None:
        hits = answer["hits"]
    else:
        # lazy: keep start-up fast (torch, faiss, mlflow)
        from ctxvec.serve.resolve import indexed_ref
        from ctxvec.serve.senses import SenseSearcher

        ref = indexed_ref(model, load_recipe(config, []).registry.model_name)
        hits = [h.to_dict() for h in SenseSearcher.from_registry(workspace(), ref).senses(
            word, context, k)]
    if as_json:
        return dump({"hits": hits})
    return format_senses(hits) if hits else "no hits"


def format_senses(hits: list[dict]) -> str:
    """Ranked word occurrences, the word itself in [brackets] within its snippet."""
    out = []
    for rank, h in enumerate(hits, 1):
        a, b = h["start"] - h["snippet_start"], h["end"] - h["snippet_start"]
        text = h["text"]
        marked = " ".join(f"{text[:a]}[{text[a:b]}]{text[b:]}".split())
        title = f" [{h['title']}]" if h.get("title") else ""
        out.append(f"{rank:>3}. {h['score']:.4f}  {h['doc_id']}{title} @{h['start']}\n"
                   f"       {marked}")
    return "\n".join(out)


# --- explain --------------------------------------------------------------------------------


def _parse_head(head: str) -> int | None:
    if head.strip().lower() == "mean":
        return None
    try:
        return int(head)
    except ValueError:
        raise UserError(f"--head must be a head number or 'mean', got {head!r}") from None


@command
def explain(
    text: Annotated[str, typer.Argument(help="The text whose attention you want to see.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Model reference: models:/<name>@<alias>, minilm or a "
        "folder.")] = DEFAULT_CHAMPION,
    layer: Annotated[int, typer.Option(help="Transformer layer: 0 the first, -1 the "
                                       "last.")] = -1,
    head: Annotated[str, typer.Option(help="Attention head number, or 'mean' for the mean "
                                      "over heads.")] = "mean",
    max_tokens: Annotated[int, typer.Option(help="Cut the text to this many tokens "
                                            "(specials included).")] = 64,
    as_json: JsonOpt = False,
) -> str:
    """Draw the attention weights of one layer and head (or their mean) over the tokens of TEXT
    as a heatmap PNG; --json also prints the tokens and weights."""
    # lazy: keep start-up fast (torch, matplotlib)
    from ctxvec.model.attention import attention_map, draw_attention
    from ctxvec.serve.resolve import model_dir

    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} must end in .png")
    head_idx = _parse_head(head)
    amap = attention_map(model_dir(workspace(), model), text, layer, head_idx, max_tokens)
    draw_attention(amap.tokens, amap.weights, out, amap.title(model))
    if as_json:
        return dump({"out": str(out), "model": model, **amap.to_dict()})
    return f"wrote {out}: {amap.title(model)}; {len(amap.tokens)} tokens"
