"""``ctxvec eval sts|retrieval|wic|perplexity``: one benchmark on one model, metrics printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctxvec.cli._common import NO_RECIPE, JsonOpt, UserError, command, dump, load_recipe, workspace

eval_app = typer.Typer(help="Evaluate a model on a benchmark; --json prints the metrics.",
                       no_args_is_help=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model reference: minilm, a "
                                       "folder or models:/<name>@<alias>.")]
BatchOpt = Annotated[int, typer.Option(help="Sequences per forward pass.")]


def _check_batch(batch_size: int) -> None:
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")


@eval_app.command("sts")
@command
def eval_sts(
    data: Annotated[Path, typer.Option("--data", help="STS Benchmark TSV, e.g. "
                                       "../shared/data/stsbenchmark/sts-dev.csv.")],
    model: ModelOpt,
    batch_size: BatchOpt = 64,
    as_json: JsonOpt = False,
) -> str:
    """Spearman correlation of cosine similarity with the gold scores of an STS file."""
    # lazy: keep start-up fast (torch, transformers)
    from ctxvec.serve.resolve import load_encoder
    from ctxvec.train.sts import evaluate_sts, read_sts

    pairs = read_sts(data)
    encoder = load_encoder(workspace(), model)
    result = {**evaluate_sts(encoder, pairs, batch_size), "model": model, "data": str(data)}
    if as_json:
        return dump(result)
    return f"STS {data.name}: spearman {result['spearman']:.4f} (n={result['n']})"


@eval_app.command("retrieval")
@command
def eval_retrieval(
    data: Annotated[Path, typer.Option("--data", help="BEIR folder (corpus.jsonl, "
                                       "queries.jsonl, qrels/<split>.tsv), e.g. "
                                       "../shared/data/beir-arguana.")],
    model: ModelOpt,
    split: Annotated[str, typer.Option(help="Qrels split: qrels/<split>.tsv.")] = "test",
    batch_size: BatchOpt = 64,
    search: Annotated[str, typer.Option(
        "--search", help="exact (numpy, the reference) or index (a FAISS index built from "
        "--factory, as the pipeline serves; with Flat both give the same figures).")] = "exact",
    factory: Annotated[str, typer.Option(
        "--factory", help="FAISS factory string for --search index.")] = "Flat",
    hybrid: Annotated[bool, typer.Option(
        "--hybrid", help="Also BM25 alone and BM25 fused with the dense ranking (reciprocal-rank "
        "fusion, as `ctxvec query --hybrid`), reported next to dense.")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Recipe YAML whose query.rrf_k --hybrid fuses with.",
        show_default=NO_RECIPE)] = None,
    as_json: JsonOpt = False,
) -> str:
    """nDCG@10, Recall@100 and MRR@10 of dense retrieval on a BEIR-format set; with --hybrid,
    of BM25 and of their fusion too."""
    # lazy: keep start-up fast (torch, faiss, bm25s)
    from ctxvec.evaluate.retrieval import evaluate_hybrid, evaluate_retrieval, read_beir
    from ctxvec.index.factory import index_candidates
    from ctxvec.index.hybrid import HybridCandidates
    from ctxvec.serve.resolve import load_encoder

    _check_batch(batch_size)
    if search not in ("exact", "index"):
        raise UserError(f"--search must be exact or index, got {search!r}")
    rrf_k = load_recipe(config, []).query.rrf_k
    beir = read_beir(data, split)
    encoder = load_encoder(workspace(), model)
    candidates = index_candidates(factory) if search == "index" else None
    result: dict = {"model": model, "data": str(data), "split": split, "search": search}
    if search == "index":
        result["factory"] = factory
    if hybrid:
        ranker = HybridCandidates(beir.doc_ids, beir.doc_texts, rrf_k)
        runs = evaluate_hybrid(encoder, beir, ranker, batch_size, candidates=candidates)
        # dense at the top level, as without --hybrid; the others beside it
        result = {**runs.pop("dense"), **result, **runs, "rrf_k": rrf_k}
    else:
        result = {**evaluate_retrieval(encoder, beir, batch_size, candidates=candidates),
                  **result}
    if as_json:
        return dump(result)
    title = f"retrieval {data.name}/{split}:"
    if not hybrid:
        return _retrieval_line(title, result)
    runs = (("dense", result), ("bm25", result["bm25"]), ("hybrid", result["hybrid"]))
    return "\n".join([title] + [_retrieval_line(f"  {n:<6}", m) for n, m in runs])


def _retrieval_line(head: str, m: dict) -> str:
    return (f"{head} ndcg@10 {m['ndcg@10']:.4f}, recall@100 {m['recall@100']:.4f}, "
            f"mrr@10 {m['mrr@10']:.4f} (n={m['n_queries']})")


@eval_app.command("wic")
@command
def eval_wic(
    data: Annotated[Path, typer.Option("--data", help="WiC folder (<split>/<split>.data.txt "
                                       "and .gold.txt; train/ sets the threshold), e.g. "
                                       "../shared/data/wic.")],
    model: ModelOpt,
    split: Annotated[str, typer.Option(help="Split to report accuracy on.")] = "dev",
    layer: Annotated[int, typer.Option(help="Hidden layer whose token vectors are compared: "
                                       "-1 the last, 0 the embeddings.")] = -1,
    batch_size: BatchOpt = 64,
    as_json: JsonOpt = False,
) -> str:
    """WiC accuracy: cosine of the target word's context vectors in two sentences, with the
    threshold chosen on train."""
    # lazy: keep start-up fast (torch, transformers)
    from ctxvec.evaluate.wic import evaluate_wic, read_wic
    from ctxvec.serve.resolve import load_encoder

    _check_batch(batch_size)
    if not data.is_dir():
        raise UserError(f"WiC folder not found: {data}")
    for part in {"train", split}:  # fail fast (exit 2) on bad data, before loading the model
        read_wic(data, part)
    encoder = load_encoder(workspace(), model)
    result = {**evaluate_wic(encoder, data, split, layer, batch_size), "model": model,
              "data": str(data), "split": split, "layer": layer}
    if as_json:
        return dump(result)
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
    # lazy: keep start-up fast (torch, transformers)
    from ctxvec.evaluate.perplexity import evaluate_perplexity
    from ctxvec.serve.resolve import model_dir

    folder = model_dir(workspace(), model)
    result = {**evaluate_perplexity(folder, data, max_tokens, max_length, batch_size),
              "model": model, "data": str(data)}
    if as_json:
        return dump(result)
    return (f"pseudo-perplexity {result['pseudo_perplexity']:.3f} over {result['tokens']} "
            f"tokens in {result['passages']} passages of {data.name}")
