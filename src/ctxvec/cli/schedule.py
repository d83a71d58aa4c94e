"""``ctxvec schedule``: the pipeline and the continual update as Prefect deployments, served by
this process or registered with a work pool."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from ctxvec.cli._common import JsonOpt, UserError, command, dump, reflow_doc, workspace


@reflow_doc
def schedule(
    recipe: Annotated[Path | None, typer.Option(
        "--recipe", "-r", help="Recipe of the pipeline deployment, e.g. configs/demo.yaml.")
    ] = None,
    cron: Annotated[str | None, typer.Option(
        "--cron", help="When the pipeline runs: a cron string, e.g. '0 2 * * *' (02:00 every "
        "day, in --timezone).")] = None,
    interval: Annotated[float | None, typer.Option(
        "--interval", metavar="SECONDS", help="Or: run the pipeline every this many seconds "
        "(instead of --cron).")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Pipeline deployment name.",
        show_default="the recipe's file stem")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a key of the pipeline recipe: --set "
        "train.steps=50 (repeatable).")] = None,
    continual_recipe: Annotated[Path | None, typer.Option(
        "--continual-recipe", help="Recipe of the continual-update deployment (ctxvec update).")
    ] = None,
    continual_cron: Annotated[str | None, typer.Option(
        "--continual-cron", help="When the continual update runs (cron).")] = None,
    continual_interval: Annotated[float | None, typer.Option(
        "--continual-interval", metavar="SECONDS", help="Or: run the continual update every "
        "this many seconds; it ingests what landed in the sources since the last run, and stops "
        "early when nothing did.")] = None,
    continual_name: Annotated[str | None, typer.Option(
        "--continual-name", help="Continual deployment name.",
        show_default="the recipe's file stem")] = None,
    continual_set: Annotated[list[str] | None, typer.Option(
        "--continual-set", metavar="KEY=VALUE", help="Override a key of the continual recipe: "
        "--continual-set continual.replay_ratio=0.3 (repeatable).")] = None,
    timezone: Annotated[str, typer.Option(
        "--timezone", help="IANA timezone cron times are read in.")] = "UTC",
    tags: Annotated[list[str] | None, typer.Option(
        "--tag", help="Extra deployment tag (repeatable; 'ctxvec' is always set).")] = None,
    home: Annotated[Path | None, typer.Option(
        "--home", help="Workspace the runs write to.",
        show_default="$CTXVEC_HOME, made absolute")] = None,
    work_pool: Annotated[str | None, typer.Option(
        "--work-pool", help="Register the deployments with this work pool and exit; its "
        "workers run them (prefect worker start --pool NAME; see infra/README.md).",
        show_default="none: this process serves them")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", help="While serving: at most this many flow runs at once.",
        show_default="no limit")] = None,
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
        from ctxvec_flows import deployments as d  # lazy: keep start-up fast (pydantic, pyarrow)

        # checked before anything is written, and in a dry run too: what it plans must be true
        if work_pool and d.api_url() is None:
            raise UserError("--work-pool needs a Prefect server that workers reach: start one "
                            "(prefect server start) and set PREFECT_API_URL")
        ws = None if home else workspace()  # a store URI stays one: flows get ws.home
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
        return dump(out) if as_json else format_schedule(out)

    with contextlib.ExitStack() as stack:
        plan(stack)
        if serving:
            # lazy: keep start-up fast (pydantic; serving imports prefect)
            from ctxvec_flows.deployments import serve

            command(lambda: serve(specs, limit=limit))()


def format_schedule(out: dict) -> str:
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
