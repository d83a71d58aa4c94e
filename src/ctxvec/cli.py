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
    "MLflow, and query nearest neighbours. Workspace: $CTXVEC_HOME (default ./.ctxvec).",
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

    summary = pipeline(str(config), list(set_ or []), str(ws.root))
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
        raise UserError(f"no snapshot in {ws.root}: run `ctxvec ingest SOURCE...` first")
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


@app.command()
@command
def query(
    text: Annotated[str, typer.Argument(help="The text whose nearest neighbours you want.")],
    k: Annotated[int, typer.Option("-k", "--k", help="Number of documents to return.")] = 10,
    model: Annotated[str | None, typer.Option(
        "--model", help="Registry reference whose index serves the query "
        "[default: models:/ctxvec-encoder@champion].")] = None,
    as_json: JsonOpt = False,
) -> str:
    """Nearest documents to TEXT, from the champion model and its own index."""
    from ctxvec.serve.search import Searcher

    if k < 1:
        raise UserError(f"-k must be at least 1, got {k}")
    ref = model or f"models:/{DEFAULT_MODEL_NAME}@champion"
    if not ref.startswith("models:/"):
        raise UserError("--model must be a registry reference (models:/<name>@<alias> or "
                        "models:/<name>/<version>): only registered versions have an index")
    hits = [h.to_dict() for h in Searcher(_workspace(), ref).search(text, k)]
    if as_json:
        return _dump({"hits": hits})
    return _format_hits(hits) if hits else "no hits"


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
    as_json: JsonOpt = False,
) -> str:
    """nDCG@10, Recall@100 and MRR@10 of exact dense retrieval on a BEIR-format set."""
    from ctxvec.evaluate.retrieval import evaluate_retrieval, read_beir
    from ctxvec.model.encoder import Encoder
    from ctxvec.model.refs import resolve_model_ref

    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    beir = read_beir(data, split)
    encoder = Encoder.load(resolve_model_ref(model, _workspace().root))
    result = {**evaluate_retrieval(encoder, beir, batch_size), "model": model,
              "data": str(data), "split": split}
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
