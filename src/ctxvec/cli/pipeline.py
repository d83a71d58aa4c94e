"""``ctxvec run`` and ``ctxvec update``: the whole pipeline and the continual update, each run as
its Prefect flow in this process, and their summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctxvec.cli._common import (
    JsonOpt,
    command,
    dump,
    format_check,
    format_hits,
    format_metrics,
    load_recipe,
    prefect_env,
    set_opt,
    workspace,
    writing,
)


@command
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Recipe YAML, e.g. "
                                         "configs/tiny.yaml or configs/demo.yaml.")],
    set_: Annotated[list[str] | None, set_opt("train.steps=50")] = None,
    promote: Annotated[str | None, typer.Option(
        "--promote", metavar="gate|always|never",
        help="Whether the new version becomes the champion: gate = only if it is no worse than "
        "the champion on this recipe's evaluations (the first version always); always; never.",
        show_default="the recipe's registry.promote: gate")] = None,
    as_json: JsonOpt = False,
) -> str:
    """Run the whole pipeline as a Prefect flow: ingest, tokenizer, train, evaluate, register,
    embed, index, promote (gated: a worse model does not replace the champion), then print the
    sample query's neighbours."""
    set_ = [*(set_ or []), *([f"registry.promote={promote}"] if promote else [])]
    load_recipe(config, set_)  # fail fast (exit 2) before Prefect starts
    ws = workspace().ensure()
    prefect_env(ws.root)
    with writing(ws):  # a busy workspace fails fast too
        from ctxvec_flows.ephemeral import start_ephemeral_api  # lazy: keep start-up fast
        from ctxvec_flows.pipeline import pipeline  # lazy: keep start-up fast (prefect)

        start_ephemeral_api()
        summary = pipeline(str(config), list(set_ or []), ws.home)  # a folder or a store URI
    return dump(summary) if as_json else format_run(summary)


def format_run(s: dict) -> str:
    snap, ev, model, idx = s["snapshot"], s["evaluate"], s["model"], s["index"]
    lines = [
        f"workspace   {s['workspace']}",
        f"snapshot    {snap['snapshot_id']}: kept {snap['kept']} of {snap['read']} records "
        f"({snap['duplicates']} duplicates, {snap['filtered']} filtered, "
        f"{snap['quarantined']} quarantined)",
        f"tokenizer   {s['tokenizer']['kind']}, {s['tokenizer']['vocab_size']} tokens",
        f"train       {s['train']['steps']} steps, {s['train']['tokens_seen']} tokens, "
        f"final loss {s['train']['final_loss']}",
        "evaluate    " + format_metrics(ev["metrics"])
        + "".join(f"  [skipped {k}: {v}]" for k, v in ev["skipped"].items()),
        f"model       {model['uri']}",
        f"index       {idx['factory']}, {idx['count']} vectors, recall@10 "
        f"{idx['recall_at_10']:.3f}",
        *format_promotion(s["promotion"]),
    ]
    q = s["sample_query"]
    if q["text"] and s["champion"]:
        lines += ["", f"nearest neighbours of: {q['text']!r} (champion, version "
                  f"{s['champion']})", format_hits(q["hits"])]
    return "\n".join(lines)


def format_promotion(p: dict) -> list[str]:
    """What the promote stage decided: the gate's checks, or its reason; how to promote by
    hand a version it held back."""
    if p["decision"] == "promote":
        head = (f"promote     champion -> version {p['version']}"
                + (f" (was {p['previous_champion']})" if p["previous_champion"] else ""))
    else:
        kept = (f"the champion stays version {p['champion']}" if p["champion"]
                else "no champion")
        head = f"promote     {p['decision']}: {kept}"
    checks = [f"  {format_check(c, 'champion ', 'new ')}" for c in p["checks"]]
    return [head, *(checks or [f"            {p['reason']}"]),
            *([f"            {p['hint']}"] if p.get("hint") else [])]


@command
def update(
    config: Annotated[Path, typer.Option("--config", "-c", help="Recipe YAML; its ingest "
                                         "sources bring the new data, its continual section "
                                         "sets replay, regulariser and gate.")],
    set_: Annotated[list[str] | None, set_opt("continual.replay_ratio=0.3")] = None,
    as_json: JsonOpt = False,
) -> str:
    """Continual update as a Prefect flow: ingest what is new, train the champion on it with
    replay and a regulariser, evaluate old and new domain, register the challenger, and promote
    it (embed, index, switch) only if the gate passes. Re-running after a crash completes it."""
    load_recipe(config, set_)
    ws = workspace().ensure()
    prefect_env(ws.root)
    with writing(ws):
        from ctxvec_flows.continual import continual  # lazy: keep start-up fast (prefect)
        from ctxvec_flows.ephemeral import start_ephemeral_api  # lazy: keep start-up fast

        start_ephemeral_api()
        out = continual(str(config), list(set_ or []), ws.home)
    return dump(out) if as_json else format_update(out)


def format_update(s: dict) -> str:
    plan = s["plan"]
    lines = [f"parent      version {plan['parent_version']} (saw snapshot "
             f"{plan['parent_snapshot']}); {plan['new_docs']} new, {plan['old_docs']} earlier "
             "documents"]
    if s["status"] == "nothing-new":
        return "\n".join([*lines, "status      nothing new: the champion stays"])
    lines.append(f"challenger  version {s['version']}")
    lines += [f"  {format_check(c)}" for c in s["gate"]["checks"]]
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
