"""``ctxvec encode`` (a text file, line by line) and ``ctxvec embed`` (the corpus, optionally
then its index): vectors into Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctxvec.cli._common import (
    JsonOpt,
    UserError,
    command,
    dump,
    load_recipe,
    set_opt,
    workspace,
)


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
    # lazy: keep start-up fast (pyarrow, torch, transformers)
    from ctxvec.embed.lines import encode_lines, read_lines
    from ctxvec.serve.resolve import query_encoder

    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    lines = read_lines(input)  # bad input fails before the model loads
    # a registry version in the precision its index was embedded in: the vectors match it
    encoder = query_encoder(workspace(), model)
    dim = encode_lines(encoder, lines, output, batch_size)
    summary = {"output": str(output), "rows": len(lines), "dim": dim, "model": model,
               "precision": encoder.precision}
    return dump(summary) if as_json else (f"wrote {len(lines)} vectors of {dim} to {output} "
                                          f"({encoder.precision})")


@command
def embed(
    model: Annotated[str, typer.Option("--model", "-m", help="Model reference: minilm, a "
                                       "folder, models:/<name>@<alias> or models:/<name>/<N>.")],
    snapshot: Annotated[str | None, typer.Option(
        "--snapshot", help="Corpus snapshot id: the corpus view up to it is embedded.",
        show_default="the newest")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Recipe YAML (its "
                      "embed and index sections are used).",
                      show_default="built-in defaults")] = None,
    set_: Annotated[list[str] | None, set_opt("embed.batch_size=128")] = None,
    words: Annotated[bool, typer.Option(
        "--words", help="Also write a context vector per word occurrence (sense search).")] = False,
    build_index: Annotated[bool, typer.Option(
        "--index", help="Then build the FAISS index; for a registry version, also link it to "
        "the version (a server can then serve the pair).")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="CPU threads to compute with (embed.threads).",
        show_default="the CPUs this process may use")] = None,
    as_json: JsonOpt = False,
) -> str:
    """Embed the corpus into Parquet: one L2-normalised vector per chunk (doc_id, chunk, char
    offsets, model_version, vector). Resumable: re-running after an interruption continues from
    the first shard not written."""
    from ctxvec import stages  # lazy: keep start-up fast (torch, faiss, mlflow)
    from ctxvec.serve.resolve import embed_config

    overrides = list(set_ or [])
    if words:
        overrides.append("embed.words.enabled=true")
    if threads is not None:
        overrides.append(f"embed.threads={threads}")
    # a registry version is embedded in the precision it records (its pyfunc's and queries')
    cfg = embed_config(load_recipe(config, overrides), workspace(), model)
    out = stages.embed_model(cfg, workspace().ensure(), model, snapshot, build_index)
    if as_json:
        return dump(out)
    emb, idx = out["embeddings"], out["index"]
    text = (f"embedded {emb['docs']} documents as {emb['rows']} chunk vectors (dim {emb['dim']}) "
            f"-> {emb['path']}")
    if idx:
        text += (f"\nindex: {idx['factory']}, recall@10 vs exact {idx['recall_at_10']:.3f} -> "
                 f"{idx['path']}")
    return text
