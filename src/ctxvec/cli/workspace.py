"""``ctxvec workspace du|prune``: where the workspace's space goes, and reclaiming what no
registered version, alias or resumable run needs (``ctxvec.stages.space``)."""

from __future__ import annotations

from typing import Annotated

import typer

from ctxvec.cli._common import JsonOpt, command, dump, workspace

workspace_app = typer.Typer(help="The workspace ($CTXVEC_HOME) on disk: where the space goes, "
                            "and pruning what nothing needs.", no_args_is_help=True)


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _items(items: list[dict]) -> list[str]:
    return [f"  {human(i['bytes']):>9}  {i['kind']:<11} {i['path']}"
            + (f"\n             -> a hard link of {i['keep']}" if i.get("keep") else "")
            for i in items]


@workspace_app.command("du")
@command
def workspace_du(as_json: JsonOpt = False) -> str:
    """The space each area of the workspace takes (a file with several names counted once),
    and what `ctxvec workspace prune` would reclaim."""
    from ctxvec.stages.space import usage  # lazy: keep start-up fast

    u = usage(workspace())
    if as_json:
        return dump(u)
    lines = [f"workspace {u['workspace']}: {human(u['total_bytes'])}"]
    lines += [f"  {human(a['bytes']):>9}  {a['area']} ({a['files']} files)" for a in u["areas"]]
    if not u["prunable"]:
        return "\n".join([*lines, "nothing to prune"])
    lines += ["", f"prunable: {human(u['prunable_bytes'])} (ctxvec workspace prune)",
              *_items(u["prunable"])]
    return "\n".join(lines)


@workspace_app.command("prune")
@command
def workspace_prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go.")] = False,
    as_json: JsonOpt = False,
) -> str:
    """Remove the checkpoints of finished training runs and a killed writer's leftovers, and
    hard-link identical copies of weights (run folder, MLflow artifacts, download cache) to one.
    Never touches what a registered version, an alias or an interrupted run needs."""
    from ctxvec.stages.space import prune  # lazy: keep start-up fast

    out = prune(workspace(), dry_run=dry_run)
    if as_json:
        return dump(out)
    verb = "would free" if dry_run else "freed"
    return "\n".join([f"{verb} {human(out['freed_bytes'])} in {out['workspace']}",
                      *_items(out["pruned"])])
