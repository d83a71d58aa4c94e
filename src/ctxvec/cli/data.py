"""``ctxvec ingest`` and ``ctxvec tokenizer train``: the corpus and the tokenizer stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ctxvec.cli._common import (
    ConfigOpt,
    JsonOpt,
    SetOpt,
    command,
    dump,
    load_recipe,
    set_opt,
    workspace,
    writing,
)


@command
def ingest(
    sources: Annotated[list[str] | None, typer.Argument(
        help="Files, folders or globs.", show_default="the recipe's ingest.sources")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> str:
    """Read sources into a new corpus snapshot: clean, drop exact and near duplicates (also
    against earlier snapshots), quarantine bad records with their reasons."""
    # lazy: keep start-up fast (pyarrow, numpy)
    from ctxvec.ingest.snapshot import rejection_reasons, run_ingest

    overrides = list(set_ or [])
    if sources:  # paths that exist are made absolute: the recipe may be read from elsewhere
        overrides.append("ingest.sources=" + json.dumps([str(Path(s).resolve()) if Path(s).exists()
                                                         else s for s in sources]))
    cfg = load_recipe(config, overrides)
    with writing(workspace().ensure()) as ws:
        snap = run_ingest(cfg, ws)
    if as_json:
        return dump({"snapshot": snap.snapshot_id, **snap.to_dict(),
                     "by_reason": rejection_reasons(snap)})
    verb = "snapshot" if snap.created else "nothing new; corpus at snapshot"
    return (f"{verb} {snap.snapshot_id}: read {snap.read}, kept {snap.kept}, "
            f"duplicates {snap.duplicates}, near-duplicates {snap.near_duplicates}, "
            f"filtered {snap.filtered}, quarantined {snap.quarantined}"
            + (f", deferred {snap.deferred}" if snap.deferred else "")
            + (f", {snap.skipped_files} unchanged file(s) skipped" if snap.skipped_files else "")
            + f"\ncorpus: {snap.corpus_docs} documents in {len(snap.corpus)} snapshot(s)"
            + (f"\nrejected records: {snap.path}/rejected.jsonl" if snap.created else ""))


tokenizer_app = typer.Typer(help="Train tokenizers on the workspace corpus.",
                            no_args_is_help=True)


@tokenizer_app.command("train")
@command
def tokenizer_train(
    config: ConfigOpt = None,
    set_: Annotated[list[str] | None, set_opt("tokenizer.vocab_size=16000")] = None,
    snapshot: Annotated[str | None, typer.Option(help="Corpus as of this snapshot id.",
                                                 show_default="the newest")] = None,
    as_json: JsonOpt = False,
) -> str:
    """Train a WordPiece, byte-level BPE or Unigram tokenizer on the corpus and report
    held-out fertility, unknown rate and word coverage."""
    # lazy: keep start-up fast (pyarrow, tokenizers, transformers)
    from ctxvec.ingest.snapshot import load_snapshot
    from ctxvec.tokenizer.trainer import run_tokenizer

    cfg = load_recipe(config, ["tokenizer.source=train", *(set_ or [])])
    with writing(workspace()) as ws:
        art = run_tokenizer(cfg, ws, load_snapshot(ws, snapshot))
    if as_json:
        return dump(art.to_dict())
    st = art.stats
    return (f"{art.kind} tokenizer, {art.vocab_size} tokens: {art.path}\n"
            f"held-out ({st['heldout_docs']} docs): fertility {st['fertility']:.3f} tokens/word, "
            f"unk rate {st['unk_rate']:.4%}, word coverage {st['word_coverage']:.1%}")
