"""The ``ctxvec`` command line (Typer). Each command loads its inputs, calls one library function
and prints a summary; with ``--json`` it prints exactly one JSON object on stdout.

Exit codes: 0 success, 2 bad arguments, config or input data, 1 any other failure. Logs and
progress bars go to stderr; so does anything a library prints while a command runs (file
descriptor 1 is pointed at stderr until the result is printed), so ``--json`` output is clean.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from ctxvec import __version__
from ctxvec.errors import UserInputError

app = typer.Typer(
    name="ctxvec",
    help="Train contextual encoders, embed corpora into Parquet + FAISS, track versions in "
    "MLflow, and query nearest neighbours. Workspace: $CTXVEC_HOME (default ./.ctxvec; or "
    "s3://BUCKET/PREFIX, cached in $CTXVEC_CACHE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
eval_app = typer.Typer(help="Evaluate a model on a benchmark; --json prints the metrics.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")

log = logging.getLogger("ctxvec.cli")
DEFAULT_MODEL_NAME = "ctxvec-encoder"

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


class UserError(UserInputError):
    """Bad command-line input: exit code 2."""


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point fd 1 (and sys.stdout) at stderr, so that only our result reaches stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body with clean stdout and exit codes that follow the contract."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            with _stdout_to_stderr():
                result = fn(*args, **kwargs)
        except typer.Exit:
            raise
        except UserInputError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as e:  # anything else is our failure, not the user's
            log.debug("command failed", exc_info=True)
            typer.echo(f"error: {type(e).__name__}: {e}", err=True)
            raise typer.Exit(1) from None
        if result is not None:
            typer.echo(result)

    return wrapper


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    logging.getLogger("ctxvec").setLevel(level.upper())


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"ctxvec {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version_cb, is_eager=True,
                                          help="Print the version and exit.")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="ctxvec log level on stderr.",
                                           envvar="CTXVEC_LOG_LEVEL")] = "INFO",
) -> None:
    _setup_logging(log_level)


def _workspace():
    from ctxvec.workspace import Workspace

    return Workspace.from_env()


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


# --- run ------------------------------------------------------------------------------------


@app.command()
@command
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Recipe YAML, e.g. "
                                         "configs/tiny.yaml or configs/demo.yaml.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: "
                    "--set train.steps=50 (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> str:
    """Run the whole pipeline as a Prefect flow: ingest, tokenizer, train, evaluate, register,
    embed, index, promote, then print the sample query's neighbours."""
    from ctxvec.config import load_config

    load_config(config, set_)  # fail fast (exit 2) before Prefect starts
    ws = _workspace().ensure()
    # Prefect's local state lives in the workspace too, unless the user points elsewhere.
    os.environ.setdefault("PREFECT_HOME", str(ws.root / "prefect"))
    # The embedded server's telemetry writes race with the flow's on SQLite; it is off here.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from ctxvec_flows.pipeline import pipeline

    summary = pipeline(str(config), list(set_ or []), ws.home)  # a folder or a store URI
    if as_json:
        return _dump(summary)
    return _format_run(summary)


def _format_run(s: dict) -> str:
    snap, ev, model, idx = s["snapshot"], s["evaluate"], s["model"], s["index"]
    lines = [
        f"workspace   {s['workspace']}",
        f"snapshot    {snap['snapshot_id']}: kept {snap['kept']} of {snap['read']} records "
        f"({snap['duplicates']} duplicates, {snap['filtered']} filtered, "
        f"{snap['quarantined']} quarantined)",
        f"tokenizer   {s['tokenizer']['kind']}, {s['tokenizer']['vocab_size']} tokens",
        f"train       {s['train']['steps']} steps, {s['train']['tokens_seen']} tokens, "
        f"final loss {s['train']['final_loss']}",
        "evaluate    " + (", ".join(f"{k}={v:.4f}" for k, v in ev["metrics"].items()) or "-")
        + "".join(f"  [skipped {k}: {v}]" for k, v in ev["skipped"].items()),
        f"model       {model['uri']} (champion: version {s['champion']})",
        f"index       {idx['factory']}, {idx['count']} vectors, recall@10 "
        f"{idx['recall_at_10']:.3f}",
    ]
    q = s["sample_query"]
    if q["text"]:
        lines += ["", f"nearest neighbours of: {q['text']!r}", _format_hits(q["hits"])]
    return "\n".join(lines)


@app.command()
@command
def update(
    config: Annotated[Path, typer.Option("--config", "-c", help="Recipe YAML; its ingest "
                                         "sources bring the new data, its continual section "
                                         "sets replay, regulariser and gate.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: "
                    "--set continual.replay_ratio=0.3 (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> str:
    """Continual update as a Prefect flow: ingest what is new, train the champion on it with
    replay and a regulariser, evaluate old and new domain, register the challenger, and promote
    it (embed, index, switch) only if the gate passes. Re-running after a crash completes it."""
    from ctxvec.config import load_config

    load_config(config, set_)
    ws = _workspace().ensure()
    os.environ.setdefault("PREFECT_HOME", str(ws.root / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from ctxvec_flows.continual import continual

    out = continual(str(config), list(set_ or []), ws.home)
    if as_json:
        return _dump(out)
    return _format_update(out)


def _format_update(s: dict) -> str:
    plan = s["plan"]
    lines = [f"parent      version {plan['parent_version']} (saw snapshot "
             f"{plan['parent_snapshot']}); {plan['new_docs']} new, {plan['old_docs']} earlier "
             "documents"]
    if s["status"] == "nothing-new":
        return "\n".join([*lines, "status      nothing new: the champion stays"])
    lines.append(f"challenger  version {s['version']}")
    for c in s["gate"]["checks"]:
        lines.append(f"  {'ok  ' if c['passed'] else 'FAIL'} {c['metric']:<22} "
                     f"{c['champion']:.4f} -> {c['challenger']:.4f} "
                     f"({100 * c['relative_gain']:+.1f}%)  {c['rule']}")
    if s["status"] == "rejected":
        lines.append(f"status      rejected: {s['gate']['reason']}; the champion stays "
                     f"version {plan['parent_version']}")
    else:
        lines.append(f"status      promoted: champion is version {s['version']} "
                     f"(was {s['previous_champion']}), index {s['index']['path']}")
        d = s.get("drift")
        if d:
            lines.append(f"drift       overlap@10 {d['overlap_at_10']:.3f}, similarity "
                         f"spearman {d['similarity_spearman']:.3f}")
    return "\n".join(lines)


def _format_hits(hits: list[dict]) -> str:
    out = []
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h["text"].split())[:160]
        title = f" [{h['title']}]" if h.get("title") else ""
        out.append(f"{rank:>3}. {h['score']:.4f}  {h['doc_id']}{title}\n       {snippet}")
    return "\n".join(out)


# --- ingest and tokenizer -------------------------------------------------------------------

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Recipe YAML (its "
                      "ingest/tokenizer sections are used).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a key: "
                   "--set ingest.near_dup.threshold=0.8 (repeatable).")]


@app.command()
@command
def ingest(
    sources: Annotated[list[str] | None, typer.Argument(help="Files, folders or globs; "
                       "default: the recipe's ingest.sources.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> str:
    """Read sources into a new corpus snapshot: clean, drop exact and near duplicates (also
    against earlier snapshots), quarantine bad records with their reasons."""
    from ctxvec.config import load_config
    from ctxvec.ingest.snapshot import run_ingest

    overrides = list(set_ or [])
    if sources:
        overrides.append("ingest.sources=" + json.dumps([str(Path(s).resolve()) if Path(s).exists()
                                                         else s for s in sources]))
    cfg = load_config(config, overrides)
    snap = run_ingest(cfg, _workspace().ensure())
    if as_json:
        by_reason = {}
        if snap.created:
            from ctxvec.workspace import read_json

            by_reason = read_json(Path(snap.path) / "manifest.json")["by_reason"]
        return _dump({"snapshot": snap.snapshot_id, **snap.to_dict(), "by_reason": by_reason})
    verb = "snapshot" if snap.created else "nothing new; corpus at snapshot"
    return (f"{verb} {snap.snapshot_id}: read {snap.read}, kept {snap.kept}, "
            f"duplicates {snap.duplicates}, near-duplicates {snap.near_duplicates}, "
            f"filtered {snap.filtered}, quarantined {snap.quarantined}"
            + (f", deferred {snap.deferred}" if snap.deferred else "")
            + (f", {snap.skipped_files} unchanged file(s) skipped" if snap.skipped_files else "")
            + f"\ncorpus: {snap.corpus_docs} documents in {len(snap.corpus)} snapshot(s)"
            + (f"\nrejected records: {snap.path}/rejected.jsonl" if snap.created else ""))


def _corpus_snapshot(snapshot_id: str | None):
    """The Snapshot record of an existing snapshot (default: the newest)."""
    from ctxvec.artifacts import Snapshot
    from ctxvec.ingest.corpus import committed_snapshots, corpus_upto, count_docs
    from ctxvec.workspace import read_json

    ws = _workspace()
    snaps = committed_snapshots(ws)
    if not snaps:
        raise UserError(f"no snapshot in {ws.home}: run `ctxvec ingest SOURCE...` first")
    sid = snapshot_id or snaps[-1].name
    try:
        corpus = corpus_upto(ws, sid)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    counts = read_json(Path(corpus[-1]) / "manifest.json")["counts"]
    return Snapshot(sid, corpus[-1], corpus, count_docs(corpus), False,
                    **{k: counts.get(k, 0) for k in ("read", "kept", "duplicates",
                                                     "near_duplicates", "filtered",
                                                     "quarantined")},
                    skipped_files=0, deferred=counts.get("deferred", 0))


tokenizer_app = typer.Typer(help="Train tokenizers on the workspace corpus.",
                            no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
@command
def tokenizer_train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    snapshot: Annotated[str | None, typer.Option(help="Corpus as of this snapshot id "
                        "[default: the newest].")] = None,
    as_json: JsonOpt = False,
) -> str:
    """Train a WordPiece, byte-level BPE or Unigram tokenizer on the corpus and report
    held-out fertility, unknown rate and word coverage."""
    from ctxvec.config import load_config
    from ctxvec.tokenizer.trainer import run_tokenizer

    overrides = ["tokenizer.source=train", *(set_ or [])]
    cfg = load_config(config, overrides)
    art = run_tokenizer(cfg, _workspace(), _corpus_snapshot(snapshot))
    if as_json:
        return _dump(art.to_dict())
    st = art.stats
    return (f"{art.kind} tokenizer, {art.vocab_size} tokens: {art.path}\n"
            f"held-out ({st['heldout_docs']} docs): fertility {st['fertility']:.3f} tokens/word, "
            f"unk rate {st['unk_rate']:.4%}, word coverage {st['word_coverage']:.1%}")


# --- pretrain and finetune -----------------------------------------------------------------


def _train_and_register(cfg, need_pack: bool) -> dict | None:
    """ingest (if the recipe reads the corpus) -> tokenizer -> pack -> train -> evaluate ->
    register; each a run_* call, as the Prefect flow makes them."""
    from ctxvec.evaluate.run import run_evaluate
    from ctxvec.ingest.snapshot import run_ingest
    from ctxvec.registry.store import register_model
    from ctxvec.tokenizer.packing import run_pack
    from ctxvec.tokenizer.trainer import run_tokenizer
    from ctxvec.train import distributed
    from ctxvec.train.run import run_train

    ws = _workspace().ensure()
    world = distributed.setup(cfg.train.device)  # under torchrun: join the process group
    objectives = cfg.train.objectives
    needs_corpus = need_pack or cfg.model.init == "scratch" or any(
        o.data.source == "corpus" for o in objectives)
    snap = tok = packed = None
    if world.main:  # the data stages run once; the other ranks receive their results
        if needs_corpus:
            snap = run_ingest(cfg, ws) if cfg.ingest.sources else _corpus_snapshot(None)
        if snap or cfg.tokenizer.source == "model":
            tok = run_tokenizer(cfg, ws, snap)
        packed = run_pack(cfg, ws, snap, tok) if need_pack else None
    snap, tok, packed = distributed.broadcast((snap, tok, packed))
    trained = run_train(cfg, ws, snap, tok, packed)
    if not world.main:
        return None
    report = run_evaluate(cfg, ws, trained)
    reg = register_model(cfg, ws, snap, tok, trained, report)
    return {
        "model": reg.uri, "model_dir": trained.model_dir, "version": reg.version,
        "run_dir": trained.run_dir, "mlflow_run_id": reg.run_id, "steps": trained.steps,
        "tokens_seen": trained.tokens_seen, "final_loss": trained.final_loss,
        "train_metrics": trained.metrics, "metrics": report.metrics, "skipped": report.skipped,
    }


def _train_and_report(cfg, as_json: bool) -> str | None:
    out = _train_and_register(cfg, any(o.name == "mlm" for o in cfg.train.objectives))
    if out is None:  # a torchrun worker other than rank 0: rank 0 reports
        return None
    return _dump(out) if as_json else _format_trained(out)


def _format_trained(out: dict) -> str:
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in out["metrics"].items()) or "-"
    return (f"model   {out['model']}  ({out['model_dir']})\n"
            f"train   {out['steps']} steps, {out['tokens_seen']} tokens, final loss "
            f"{out['final_loss']}\nmetrics {metrics}")


@app.command()
@command
def pretrain(
    config: Annotated[Path, typer.Option("--config", "-c", help="Recipe YAML, e.g. "
                                         "configs/scratch-mini.yaml.")],
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> str:
    """Pretrain (masked LM, alone or with other objectives) on the corpus: ingest, tokenizer,
    pack, train, evaluate, and register the model in MLflow."""
    from ctxvec.config import load_config

    cfg = load_config(config, set_)
    if not cfg.ingest.sources:
        from ctxvec.ingest.corpus import committed_snapshots

        if not committed_snapshots(_workspace()):
            raise UserError("the recipe has no ingest.sources and the workspace no corpus")
    return _train_and_report(cfg, as_json)


@app.command()
@command
def finetune(
    config: Annotated[Path, typer.Option("--config", "-c", help="Recipe YAML, e.g. "
                                         "configs/finetune-stsb.yaml.")],
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> str:
    """Fine-tune a pretrained encoder (model.init: minilm, a folder or models:/...) with task
    objectives, early stopping on a dev metric, and register it in MLflow."""
    from ctxvec.config import load_config

    cfg = load_config(config, set_)
    if cfg.model.init == "scratch":
        raise UserError("finetune starts from a pretrained model: set model.init (e.g. minilm); "
                        "to train from scratch use `ctxvec pretrain`")
    return _train_and_report(cfg, as_json)


# --- query ----------------------------------------------------------------------------------


def _parse_filters(items: list[str] | None) -> dict[str, list[str]]:
    """``["source=wiki", "source=news", "title=Paris"]`` -> {"source": [...], "title": [...]}:
    one key repeated means any of its values; different keys must all match."""
    filters: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--filter {item!r} must look like KEY=VALUE, e.g. source=wiki_00")
        filters.setdefault(key.strip(), []).append(value)
    return filters


@app.command()
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
        "--filter", help="Only documents whose metadata match KEY=VALUE (source, title; "
        "repeatable: the same key twice means either value).")] = None,
    hybrid: Annotated[bool, typer.Option(
        "--hybrid", help="TEXT only: fuse dense and BM25 rankings (reciprocal-rank fusion); "
        "scores are then fusion scores.")] = False,
    model: Annotated[str | None, typer.Option(
        "--model", help="Registry reference whose index serves the query "
        "[default: models:/ctxvec-encoder@champion].")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Recipe YAML whose index/query sections apply (mmap, device, "
        "rrf_k).")] = None,
    as_json: JsonOpt = False,
) -> str:
    """Nearest documents to TEXT, to an indexed document (--id) or to a vector (--vector-file),
    from the champion model and its own index."""
    from ctxvec.serve.search import Searcher, read_query_vector

    if word is not None or context is not None:  # sense search: word occurrences, not documents
        mixed = any(v for v in (text, doc_id, vector_file, filter_, hybrid))
        return _sense_query(word, context, k, model, as_json, mixed)
    given = [name for name, v in (("TEXT", text), ("--id", doc_id),
                                  ("--vector-file", vector_file)) if v is not None]
    if len(given) != 1:
        raise UserError("give exactly one of TEXT, --id DOC or --vector-file F"
                        + (f" (got {', '.join(given)})" if given else ""))
    if hybrid and text is None:
        raise UserError("--hybrid needs TEXT: BM25 ranks words, not vectors")
    if k < 1:
        raise UserError(f"-k must be at least 1, got {k}")
    filters = _parse_filters(filter_)
    vector = read_query_vector(vector_file) if vector_file is not None else None
    ref = model or f"models:/{DEFAULT_MODEL_NAME}@champion"
    if not ref.startswith("models:/"):
        raise UserError("--model must be a registry reference (models:/<name>@<alias> or "
                        "models:/<name>/<version>): only registered versions have an index")
    from ctxvec.config import load_config

    searcher = Searcher(_workspace(), ref, load_config(config, []))
    if text is not None:
        found = searcher.search(text, k, filters, hybrid=hybrid)
    elif doc_id is not None:
        found = searcher.search_id(doc_id, k, filters)
    else:
        found = searcher.search_vector(vector, k, filters)
    hits = [h.to_dict() for h in found]
    if as_json:
        return _dump({"hits": hits})
    return _format_hits(hits) if hits else "no hits"


def _sense_query(word: str | None, context: str | None, k: int, model: str | None,
                 as_json: bool, mixed: bool) -> str:
    """``query --word W --context SENTENCE``: where else the corpus uses W as SENTENCE does,
    from the champion's sense index (``<index folder>/senses``)."""
    from ctxvec.serve.senses import SenseSearcher

    if word is None or context is None:
        raise UserError("sense search needs both --word W and --context SENTENCE")
    if mixed:
        raise UserError("--word/--context search word occurrences: leave out TEXT, --id, "
                        "--vector-file, --filter and --hybrid")
    if k < 1:
        raise UserError(f"-k must be at least 1, got {k}")
    ref = model or f"models:/{DEFAULT_MODEL_NAME}@champion"
    if not ref.startswith("models:/"):
        raise UserError("--model must be a registry reference (models:/<name>@<alias> or "
                        "models:/<name>/<version>): only registered versions have an index")
    hits = [h.to_dict() for h in SenseSearcher.from_registry(_workspace(), ref).senses(
        word, context, k)]
    if as_json:
        return _dump({"hits": hits})
    return _format_senses(hits) if hits else "no hits"


def _format_senses(hits: list[dict]) -> str:
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


@app.command()
@command
def explain(
    text: Annotated[str, typer.Argument(help="The text whose attention you want to see.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Model reference: models:/<name>@<alias>, minilm or a "
        "folder.")] = f"models:/{DEFAULT_MODEL_NAME}@champion",
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
    from ctxvec.model.attention import attention_map, draw_attention

    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} must end in .png")
    amap = attention_map(model, text, layer, _parse_head(head), max_tokens,
                         workspace_root=_workspace().root)
    draw_attention(amap.tokens, amap.weights, out, amap.title(model))
    if as_json:
        return _dump({"out": str(out), "model": model, **amap.to_dict()})
    return f"wrote {out}: {amap.title(model)}; {len(amap.tokens)} tokens"


# --- serve ----------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _uvicorn_log_config() -> dict:
    """uvicorn's own logging, with its access log on stderr too (stdout is for results)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    conf = copy.deepcopy(LOGGING_CONFIG)
    for handler in conf["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    return conf


@app.command()
@command
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default: serve.host, "
                    "127.0.0.1]; anything but loopback should come with an API key.")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port [default: "
                    "serve.port, 8000].")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Registry reference to serve; an alias is followed as it moves "
        "[default: models:/<registry.model_name>@champion].")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help="Require this key in the X-API-Key header [default: the variable "
        "serve.api_key_env names, CTXVEC_API_KEY; unset: no key].")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Recipe YAML (its "
                      "serve and registry sections are used).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: "
                    "--set serve.max_batch=32 (repeatable).")] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log",
                                             help="Log every request on stderr.")] = True,
) -> None:
    """Serve the champion over HTTP (FastAPI + uvicorn, one worker): POST /search, /embed,
    /senses, GET /health, /models, the web page at / and the schema at /openapi.json. A new
    champion is picked up without dropping requests."""
    import uvicorn

    from ctxvec.config import load_config
    from ctxvec.serve.app import create_app

    cfg = load_config(config, set_)
    host = host or cfg.serve.host
    port = port or cfg.serve.port
    ref = model or f"models:/{cfg.registry.model_name}@champion"
    if not ref.startswith("models:/"):
        raise UserError("--model must be a registry reference (models:/<name>@<alias> or "
                        "models:/<name>/<version>): only registered versions have an index")
    key = api_key or os.environ.get(cfg.serve.api_key_env) or None
    if not key and not _is_loopback(host):
        typer.echo(f"warning: serving on {host} without an API key: anyone who reaches this "
                   f"port can query the index; set {cfg.serve.api_key_env} or pass --api-key",
                   err=True)
    application = create_app(_workspace(), cfg, ref, api_key=key)
    uvicorn.run(application, host=host, port=port, workers=1, access_log=access_log,
                log_config=_uvicorn_log_config())


# --- encode ---------------------------------------------------------------------------------


@app.command()
@command
def encode(
    model: Annotated[str, typer.Option("--model", "-m", help="Model reference: minilm, a "
                                       "folder, or models:/<name>@<alias>.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="UTF-8 text, one input per "
                                        "line.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Parquet file to write.")],
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 64,
    as_json: JsonOpt = False,
) -> str:
    """Embed every line of a text file (one row per line, in order) into Parquet: columns
    line, text, vector (L2-normalised float32)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ctxvec.model.encoder import Encoder
    from ctxvec.model.refs import resolve_model_ref
    from ctxvec.workspace import atomic_write_bytes

    if not input.is_file():
        raise UserError(f"input file not found: {input}")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    try:
        lines = input.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{input} is not valid UTF-8 (byte {e.start})") from None
    encoder = Encoder.load(resolve_model_ref(model, _workspace().root))
    vecs = encoder.encode(lines, batch_size=batch_size, progress=True)
    table = pa.table({
        "line": pa.array(range(1, len(lines) + 1), pa.int64()),
        "text": lines,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), encoder.dim),
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(output, sink.getvalue().to_pybytes())
    summary = {"output": str(output), "rows": len(lines), "dim": encoder.dim, "model": model}
    return _dump(summary) if as_json else f"wrote {len(lines)} vectors of {encoder.dim} to {output}"


# --- embed ----------------------------------------------------------------------------------


def _model_version_for(ref: str, model_dir: Path, ws) -> str:
    """The ``model_version`` embeddings are labelled with: the registry version number, else a
    name derived from the reference and its weights (so two different folders never share)."""
    from ctxvec.model.refs import is_registry_ref
    from ctxvec.workspace import sha256_text

    if is_registry_ref(ref):
        from ctxvec.registry.store import get_version

        return get_version(ws, ref).version
    if ref == "minilm":
        return "minilm"
    weights = sorted(model_dir.glob("*.safetensors"))
    stamp = ";".join(f"{f.name}:{f.stat().st_size}" for f in weights)
    return f"{model_dir.name}-{sha256_text(str(model_dir.resolve()) + stamp)[:8]}"


@app.command()
@command
def embed(
    model: Annotated[str, typer.Option("--model", "-m", help="Model reference: minilm, a "
                                       "folder, models:/<name>@<alias> or models:/<name>/<N>.")],
    snapshot: Annotated[str | None, typer.Option(
        "--snapshot", help="Corpus snapshot id (default: the newest; the corpus view up to it "
        "is embedded).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    words: Annotated[bool, typer.Option(
        "--words", help="Also write a context vector per word occurrence (sense search).")] = False,
    build_index: Annotated[bool, typer.Option(
        "--index", help="Then build the FAISS index; for a registry version, also link it to "
        "the version (a server can then serve the pair).")] = False,
    as_json: JsonOpt = False,
) -> str:
    """Embed the corpus into Parquet: one L2-normalised vector per chunk (doc_id, chunk, char
    offsets, model_version, vector). Resumable: re-running after an interruption continues from
    the first shard not written."""
    from ctxvec.config import load_config
    from ctxvec.embed.corpus import run_embed
    from ctxvec.model.refs import is_registry_ref, resolve_model_ref

    overrides = list(set_ or [])
    if words:
        overrides.append("embed.words.enabled=true")
    cfg = load_config(config, overrides)
    ws = _workspace().ensure()
    snap = _corpus_snapshot(snapshot)
    model_dir = resolve_model_ref(model, ws.root)
    version = _model_version_for(model, model_dir, ws)
    emb = run_embed(cfg, ws, snap, str(model_dir), version)
    out: dict[str, Any] = {"model": model, "model_version": version, "snapshot": snap.snapshot_id,
                           "embeddings": emb.to_dict(), "index": None}
    if build_index:
        from ctxvec.index.build import run_index

        idx = run_index(cfg, ws, emb)
        out["index"] = idx.to_dict()
        if is_registry_ref(model):
            from ctxvec.registry.store import attach_index, get_version

            attach_index(ws, get_version(ws, model).name, version, idx)
    if as_json:
        return _dump(out)
    text = (f"embedded {emb.docs} documents as {emb.rows} chunk vectors (dim {emb.dim}) "
            f"-> {emb.path}")
    if out["index"]:
        text += f"\nindex: {out['index']['factory']}, recall@10 vs exact " \
                f"{out['index']['recall_at_10']:.3f} -> {out['index']['path']}"
    return text


# --- models ---------------------------------------------------------------------------------

models_app = typer.Typer(help="Registered encoder versions in MLflow: list, show, promote, "
                         "roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")
NameOpt = Annotated[str, typer.Option("--name", help="Registered model name.")]


def _version_row(v) -> dict:
    return {"version": v.version, "aliases": v.aliases, "data_snapshot":
            v.tags.get("data_snapshot"), "parent_version": v.tags.get("parent_version"),
            "index_uri": v.tags.get("index_uri"),
            "metrics": {k.removeprefix("eval."): float(x) for k, x in v.tags.items()
                        if k.startswith("eval.")}}


@models_app.command("list")
@command
def models_list(name: NameOpt = DEFAULT_MODEL_NAME, as_json: JsonOpt = False) -> str:
    """Every version, newest first, with its aliases, data snapshot and evaluation metrics."""
    from ctxvec.registry.store import list_versions

    rows = [_version_row(v) for v in list_versions(_workspace(), name)]
    if as_json:
        return _dump({"name": name, "versions": rows})
    lines = [f"{name}: {len(rows)} version(s)"]
    for r in rows:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in r["metrics"].items()) or "-"
        lines.append(f"  v{r['version']:<4} {','.join(r['aliases']) or '-':<20} "
                     f"snapshot {r['data_snapshot'] or '-'}  {metrics}"
                     + ("" if r["index_uri"] else "  (no index)"))
    return "\n".join(lines)


@models_app.command("show")
@command
def models_show(
    version: Annotated[str, typer.Argument(help="Version number, or an alias (champion).")],
    name: NameOpt = DEFAULT_MODEL_NAME,
    as_json: JsonOpt = False,
) -> str:
    """One version: tags, aliases, run metrics and parameters, index, drift report."""
    from ctxvec.registry.store import get_version, version_details

    ws = _workspace()
    if not version.isdigit():
        version = get_version(ws, f"models:/{name}@{version}").version
    d = version_details(ws, name, version)
    if as_json:
        return _dump(d)
    lines = [f"{name} version {d['version']}  aliases: {', '.join(d['aliases']) or '-'}"]
    for key in ("data_snapshot", "parent_version", "tokenizer_hash", "dim"):
        lines.append(f"  {key}: {d['tags'].get(key, '-')}")
    if d["index"]:
        i = d["index"]
        lines.append(f"  index: {i['factory']}, {i['count']} vectors, recall@10 "
                     f"{i['recall_at_10']} ({d['index_uri']})")
    else:
        lines.append("  index: none")
    evals = {k: v for k, v in d["metrics"].items() if k.startswith("eval/")}
    for k, v in sorted(evals.items()):
        lines.append(f"  {k}: {v:.4f}")
    if d["drift"]:
        lines.append(f"  drift vs v{d['drift'].get('against')}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in d["drift"].items() if isinstance(v, float)))
    if "gate.decision" in d["tags"]:
        lines.append(f"  gate: {d['tags']['gate.decision']} ({d['tags'].get('gate.reason', '')})")
        for c in json.loads(d["tags"].get("gate.checks", "[]")):
            lines.append(f"    {'ok  ' if c['passed'] else 'FAIL'} {c['metric']}: champion "
                         f"{c['champion']:.4f}, this version {c['challenger']:.4f} "
                         f"({100 * c['relative_gain']:+.1f}%)")
    return "\n".join(lines)


@models_app.command("promote")
@command
def models_promote(
    version: Annotated[str, typer.Argument(help="Version to serve.")],
    name: NameOpt = DEFAULT_MODEL_NAME,
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "champion",
    as_json: JsonOpt = False,
) -> str:
    """Point an alias (champion by default) at VERSION; it must have an index."""
    from ctxvec.registry.store import promote

    try:
        previous = promote(_workspace(), name, version, alias)
    except ValueError as e:
        raise UserError(str(e)) from None
    out = {"name": name, "alias": alias, "version": version, "previous": previous}
    return _dump(out) if as_json else f"{name}@{alias}: v{previous or '-'} -> v{version}"


@models_app.command("drift")
@command
def models_drift(
    old: Annotated[str, typer.Argument(help="The earlier version.")],
    new: Annotated[str, typer.Argument(help="The version to compare with it.")],
    name: NameOpt = DEFAULT_MODEL_NAME,
    probes: Annotated[int, typer.Option(help="Probe documents (from NEW's corpus).")] = 200,
    as_json: JsonOpt = False,
) -> str:
    """Drift of NEW against OLD: neighbour overlap@10 on probe documents, embedding shift,
    similarity-structure correlation and evaluation deltas; stored with NEW (tag + MLflow
    metrics) and shown by `ctxvec models show NEW`."""
    from ctxvec.continual.drift import drift_report

    if probes < 2:
        raise UserError("--probes must be at least 2")
    report = drift_report(_workspace(), name, old, new, probes)
    if as_json:
        return _dump(report)
    shift = report["shift"]
    deltas = ", ".join(f"{k} {v:+.4f}" for k, v in report["eval_deltas"].items()) or "-"
    return (f"v{new} vs v{old} on {report['probes']} probes: overlap@10 "
            f"{report['overlap_at_10']:.3f}, similarity spearman "
            f"{report['similarity_spearman']:.3f}, shift "
            f"{'n/a' if shift is None else f'{shift:.4f}'}; eval deltas: {deltas}")


@models_app.command("rollback")
@command
def models_rollback(name: NameOpt = DEFAULT_MODEL_NAME, as_json: JsonOpt = False) -> str:
    """Serve the previous champion again (with its own index)."""
    from ctxvec.registry.store import rollback

    current, target = rollback(_workspace(), name)
    out = {"name": name, "from": current, "to": target}
    return _dump(out) if as_json else f"{name}@champion: v{current} -> v{target} (rolled back)"


# --- schedule -------------------------------------------------------------------------------


@app.command()
def schedule(
    recipe: Annotated[Path | None, typer.Option(
        "--recipe", "-r", help="Recipe of the pipeline deployment, e.g. configs/demo.yaml.")
    ] = None,
    cron: Annotated[str | None, typer.Option(
        "--cron", help="When the pipeline runs: a cron string, e.g. '0 2 * * *' (02:00 every "
        "day, in --timezone).")] = None,
    interval: Annotated[float | None, typer.Option(
        "--interval", help="... or every this many seconds (instead of --cron).")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Pipeline deployment name (default: the recipe's file stem).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a key of the pipeline recipe: --set train.steps=50 "
        "(repeatable).")] = None,
    continual_recipe: Annotated[Path | None, typer.Option(
        "--continual-recipe", help="Recipe of the continual-update deployment (ctxvec update).")
    ] = None,
    continual_cron: Annotated[str | None, typer.Option(
        "--continual-cron", help="When the continual update runs (cron).")] = None,
    continual_interval: Annotated[float | None, typer.Option(
        "--continual-interval", help="... or every this many seconds: it ingests what landed "
        "in the sources since the last run, and stops early when nothing did.")] = None,
    continual_name: Annotated[str | None, typer.Option(
        "--continual-name", help="Continual deployment name (default: the recipe's stem).")
    ] = None,
    continual_set: Annotated[list[str] | None, typer.Option(
        "--continual-set", help="Override a key of the continual recipe (repeatable).")] = None,
    timezone: Annotated[str, typer.Option(
        "--timezone", help="IANA timezone cron times are read in.")] = "UTC",
    tags: Annotated[list[str] | None, typer.Option(
        "--tag", help="Extra deployment tag (repeatable; 'ctxvec' is always set).")] = None,
    home: Annotated[Path | None, typer.Option(
        "--home", help="Workspace the runs write to (default: $CTXVEC_HOME, made absolute).")
    ] = None,
    work_pool: Annotated[str | None, typer.Option(
        "--work-pool", help="Register the deployments with this work pool and exit; its "
        "workers run them (prefect worker start --pool NAME; see infra/README.md). Without "
        "it, this process serves them.")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", help="While serving: at most this many flow runs at once.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Validate and print the deployments; register nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Schedule the pipeline (e.g. nightly) and the continual update as Prefect deployments.
    Without --work-pool this command serves them, like `prefect serve`: it registers them, prints
    them, then runs each scheduled or triggered run (prefect deployment run
    'ctxvec-pipeline/NAME') itself until Ctrl-C, which pauses their schedules; with --work-pool
    it registers them with that pool and exits. They go to the Prefect server PREFECT_API_URL
    names, else to the local ephemeral one (state in $PREFECT_HOME, default
    $CTXVEC_HOME/prefect); runs track to MLFLOW_TRACKING_URI, else to the workspace's SQLite
    registry. Example: ctxvec schedule --recipe configs/demo.yaml --cron '0 2 * * *'
    --continual-recipe configs/demo.yaml --continual-interval 3600"""
    specs: list = []
    serving = not dry_run and not work_pool

    @command
    def plan(stack: contextlib.ExitStack) -> str:
        if recipe is None and continual_recipe is None:
            raise UserError("nothing to schedule: give --recipe (the pipeline) and/or "
                            "--continual-recipe (the continual update)")
        if limit is not None and (limit < 1 or work_pool):
            raise UserError("--limit is a positive number of runs, and applies when serving "
                            "(without --work-pool)")
        from ctxvec_flows import deployments as d

        # checked before anything is written, and in a dry run too: what it plans must be true
        if work_pool and d.api_url() is None:
            raise UserError("--work-pool needs a Prefect server that workers reach: start one "
                            "(prefect server start) and set PREFECT_API_URL")
        ws = None if home else _workspace()  # a store URI stays one: flows get ws.home
        ws_root = home.expanduser().resolve() if home else ws.root
        if not dry_run:  # as `ctxvec run`: Prefect's local state in the workspace by default
            ws_root.mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("PREFECT_HOME", str(ws_root / "prefect"))
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        for kind, rec, when, every, nm, sets in (
                ("pipeline", recipe, cron, interval, name, set_),
                ("continual", continual_recipe, continual_cron, continual_interval,
                 continual_name, continual_set)):
            if rec is not None:
                specs.append(d.ScheduleSpec(
                    name=nm or rec.stem, flow=kind, recipe=str(rec), overrides=tuple(sets or ()),
                    cron=when, interval=every, timezone=timezone,
                    home=str(ws_root) if ws is None else ws.home,
                    tags=tuple(tags or ()), work_pool=work_pool))
            elif when or every or nm or sets:
                flag = "--recipe" if kind == "pipeline" else "--continual-recipe"
                raise UserError(f"the {kind} schedule options need {flag}")
        for s in specs:
            s.to_deployment()  # fails here (exit 2) if a flow cannot be loaded
        local = d.api_url() is None
        if local and serving:  # the ephemeral server has no scheduler: run a real one
            stack.enter_context(d.local_server())
        registered = d.apply(specs) if work_pool and not dry_run else [s.to_dict()
                                                                       for s in specs]
        mode = "dry-run" if dry_run else ("work-pool" if work_pool else "serve")
        out = {"mode": mode, "prefect_api_url": d.api_url(), "local_server": local,
               "prefect_home": os.environ.get("PREFECT_HOME", str(ws_root / "prefect")),
               "deployments": registered}
        return _dump(out) if as_json else _format_schedule(out)

    with contextlib.ExitStack() as stack:
        plan(stack)
        if serving:
            from ctxvec_flows.deployments import serve

            command(lambda: serve(specs, limit=limit))()


def _format_schedule(out: dict) -> str:
    api = out["prefect_api_url"] or "a local Prefect server"
    if out["local_server"]:  # no PREFECT_API_URL: one for as long as this command serves
        api += f" (started by this command; state in {out['prefect_home']})"
    lines = []
    for dep in out["deployments"]:
        s = dep["schedule"]
        when = f"cron '{s['cron']}'" if s["cron"] else f"every {s['interval_seconds']:g} s"
        sets = " ".join(f"--set {o}" for o in dep["parameters"]["overrides"])
        lines.append(f"  {dep['name']:<32} {when} ({s['timezone']})  "
                     f"{dep['parameters']['config']} {sets}".rstrip())
    pool = f", work pool {out['deployments'][0]['work_pool']}" if out["deployments"] and \
        out["deployments"][0].get("work_pool") else ""
    head = {"dry-run": f"would register on {api}{pool} (dry run):",
            "work-pool": f"registered on {api}, work pool {out['deployments'][0]['work_pool']}"
                         " (its workers run them):",
            "serve": f"serving on {api}; Ctrl-C stops and pauses the schedules:"}[out["mode"]]
    return "\n".join([head, *lines])


# --- eval -----------------------------------------------------------------------------------


@eval_app.command("sts")
@command
def eval_sts(
    data: Annotated[Path, typer.Option("--data", help="STS Benchmark TSV, e.g. "
                                       "../shared/data/stsbenchmark/sts-dev.csv.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model reference.")],
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 64,
    as_json: JsonOpt = False,
) -> str:
    """Spearman correlation of cosine similarity with the gold scores of an STS file."""
    from ctxvec.evaluate.sts import evaluate_sts, read_sts
    from ctxvec.model.encoder import Encoder
    from ctxvec.model.refs import resolve_model_ref

    pairs = read_sts(data)
    encoder = Encoder.load(resolve_model_ref(model, _workspace().root))
    result = {**evaluate_sts(encoder, pairs, batch_size), "model": model, "data": str(data)}
    if as_json:
        return _dump(result)
    return f"STS {data.name}: spearman {result['spearman']:.4f} (n={result['n']})"


@eval_app.command("retrieval")
@command
def eval_retrieval(
    data: Annotated[Path, typer.Option("--data", help="BEIR folder (corpus.jsonl, "
                                       "queries.jsonl, qrels/<split>.tsv), e.g. "
                                       "../shared/data/beir-arguana.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model reference.")],
    split: Annotated[str, typer.Option(help="Qrels split: qrels/<split>.tsv.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 64,
    search: Annotated[str, typer.Option(
        "--search", help="exact (numpy, the reference) or index (a FAISS index built from "
        "--factory, as the pipeline serves; with Flat both give the same figures).")] = "exact",
    factory: Annotated[str, typer.Option(
        "--factory", help="FAISS factory string for --search index.")] = "Flat",
    as_json: JsonOpt = False,
) -> str:
    """nDCG@10, Recall@100 and MRR@10 of dense retrieval on a BEIR-format set."""
    from ctxvec.evaluate.retrieval import evaluate_retrieval, read_beir
    from ctxvec.model.encoder import Encoder
    from ctxvec.model.refs import resolve_model_ref

    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    beir = read_beir(data, split)
    encoder = Encoder.load(resolve_model_ref(model, _workspace().root))
    if search not in ("exact", "index"):
        raise UserError(f"--search must be exact or index, got {search!r}")
    result = {**evaluate_retrieval(encoder, beir, batch_size, search=search, factory=factory),
              "model": model, "data": str(data), "split": split, "search": search}
    if search == "index":
        result["factory"] = factory
    if as_json:
        return _dump(result)
    return (f"retrieval {data.name}/{split}: ndcg@10 {result['ndcg@10']:.4f}, recall@100 "
            f"{result['recall@100']:.4f}, mrr@10 {result['mrr@10']:.4f} "
            f"(n={result['n_queries']})")


@eval_app.command("wic")
@command
def eval_wic(
    data: Annotated[Path, typer.Option("--data", help="WiC folder (<split>/<split>.data.txt "
                                       "and .gold.txt; train/ sets the threshold), e.g. "
                                       "../shared/data/wic.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model reference.")],
    split: Annotated[str, typer.Option(help="Split to report accuracy on.")] = "dev",
    layer: Annotated[int, typer.Option(help="Hidden layer whose token vectors are compared: "
                                       "-1 the last, 0 the embeddings.")] = -1,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 64,
    as_json: JsonOpt = False,
) -> str:
    """WiC accuracy: cosine of the target word's context vectors in two sentences, with the
    threshold chosen on train."""
    from ctxvec.evaluate.wic import evaluate_wic, read_wic
    from ctxvec.model.encoder import Encoder
    from ctxvec.model.refs import resolve_model_ref

    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if not data.is_dir():
        raise UserError(f"WiC folder not found: {data}")
    for part in {"train", split}:  # fail fast (exit 2) on bad data, before loading the model
        read_wic(data, part)
    encoder = Encoder.load(resolve_model_ref(model, _workspace().root))
    result = {**evaluate_wic(encoder, data, split, layer, batch_size), "model": model,
              "data": str(data), "split": split, "layer": layer}
    if as_json:
        return _dump(result)
    return (f"WiC {split}: accuracy {result['accuracy']:.4f} (n={result['n']}), threshold "
            f"{result['threshold']:.4f} (train accuracy {result['train_accuracy']:.4f})")


@eval_app.command("perplexity")
@command
def eval_perplexity(
    data: Annotated[Path, typer.Option("--data", help="Text file, one passage per line, e.g. "
                                       "../shared/data/wikitext-2/test.txt.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model reference (needs a "
                                       "masked-LM head to be meaningful).")],
    max_tokens: Annotated[int, typer.Option(help="Score at most this many tokens (each costs "
                                            "one forward pass).")] = 20000,
    max_length: Annotated[int, typer.Option(help="Window length in tokens, [CLS] and [SEP] "
                                            "included.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Masked copies per forward pass.")] = 64,
    as_json: JsonOpt = False,
) -> str:
    """MLM pseudo-perplexity (Salazar et al. 2020): mask each token in turn and score it."""
    from ctxvec.evaluate.perplexity import evaluate_perplexity
    from ctxvec.model.refs import resolve_model_ref

    folder = resolve_model_ref(model, _workspace().root)
    result = {**evaluate_perplexity(folder, data, max_tokens, max_length, batch_size),
              "model": model, "data": str(data)}
    if as_json:
        return _dump(result)
    return (f"pseudo-perplexity {result['pseudo_perplexity']:.3f} over {result['tokens']} "
            f"tokens in {result['passages']} passages of {data.name}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
