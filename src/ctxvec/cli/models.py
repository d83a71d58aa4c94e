"""``ctxvec models list|show|promote|drift|rollback``: the registered encoder versions."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ctxvec.cli._common import (
    DEFAULT_MODEL_NAME,
    JsonOpt,
    UserError,
    command,
    dump,
    format_check,
    format_metrics,
    workspace,
)
from ctxvec.refs import ModelRef

models_app = typer.Typer(help="Registered encoder versions in MLflow: list, show, promote, "
                         "roll back.", no_args_is_help=True)
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
    from ctxvec.registry import Registry  # lazy: keep start-up fast (mlflow)

    rows = [_version_row(v) for v in Registry(workspace()).list_versions(name)]
    if as_json:
        return dump({"name": name, "versions": rows})
    lines = [f"{name}: {len(rows)} version(s)"]
    for r in rows:
        lines.append(f"  v{r['version']:<4} {','.join(r['aliases']) or '-':<20} "
                     f"snapshot {r['data_snapshot'] or '-'}  {format_metrics(r['metrics'])}"
                     + ("" if r["index_uri"] else "  (no index)"))
    return "\n".join(lines)


@models_app.command("show")
@command
def models_show(
    version: Annotated[str, typer.Argument(help="Version number, or an alias (champion).")],
    name: NameOpt = DEFAULT_MODEL_NAME,
    as_json: JsonOpt = False,
) -> str:
    """One version: tags, aliases, where its model is (MLflow artifact URI, local folder), run
    metrics and parameters, index, drift report."""
    from ctxvec.registry import Registry  # lazy: keep start-up fast (mlflow)

    registry = Registry(workspace())
    if not version.isdigit():
        version = registry.resolve(ModelRef.registered(name, alias=version)).version
    d = registry.details(name, version)
    if as_json:
        return dump(d)
    lines = [f"{name} version {d['version']}  aliases: {', '.join(d['aliases']) or '-'}"]
    for key in ("data_snapshot", "parent_version", "tokenizer_hash", "dim"):
        lines.append(f"  {key}: {d['tags'].get(key, '-')}")
    lines.append(f"  model artifacts: {d['artifact_uri']}")
    lines.append("  model folder: " + (d["model_dir"] or "not in the workspace cache yet (ctxvec "
                                       "export, or any command that loads it, downloads it)"))
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
        lines += [f"    {format_check(c, 'champion ', 'this version ')}"
                  for c in json.loads(d["tags"].get("gate.checks", "[]"))]
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
    from ctxvec.registry import Registry  # lazy: keep start-up fast (mlflow)

    try:
        previous = Registry(workspace()).promote(name, version, alias)
    except ValueError as e:
        raise UserError(str(e)) from None
    out = {"name": name, "alias": alias, "version": version, "previous": previous}
    return dump(out) if as_json else f"{name}@{alias}: v{previous or '-'} -> v{version}"


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
    from ctxvec.continual.drift import drift_report  # lazy: keep start-up fast (torch, mlflow)

    if probes < 2:
        raise UserError("--probes must be at least 2")
    report = drift_report(workspace(), name, old, new, probes)
    if as_json:
        return dump(report)
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
    from ctxvec.registry import Registry  # lazy: keep start-up fast (mlflow)

    current, target = Registry(workspace()).rollback(name)
    out = {"name": name, "from": current, "to": target}
    return dump(out) if as_json else f"{name}@champion: v{current} -> v{target} (rolled back)"
