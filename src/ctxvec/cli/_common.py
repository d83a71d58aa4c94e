"""What every command shares: the root Typer app, the ``command`` decorator (clean stdout, exit
codes), common options, the workspace and recipe, and the formatting of results.

Start-up must stay fast (``ctxvec --help`` is typed often): this module and the command modules
import only typer and light ctxvec modules at the top; anything that pulls in torch, pydantic,
pyarrow, mlflow, faiss or prefect is imported inside the command that needs it.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ctxvec import __version__
from ctxvec.cli._help import HelpGroup
from ctxvec.errors import UserInputError

if TYPE_CHECKING:
    from ctxvec.config import CtxvecConfig
    from ctxvec.workspace import Workspace

log = logging.getLogger("ctxvec.cli")

# The name `models` commands and `explain` default to. Commands that read a recipe (query, serve)
# take its registry.model_name instead, whose default is this same name.
DEFAULT_MODEL_NAME = "ctxvec-encoder"

app = typer.Typer(
    name="ctxvec",
    cls=HelpGroup,
    help="Train contextual encoders, embed corpora into Parquet + FAISS, track versions in "
    "MLflow, and query nearest neighbours. Workspace: $CTXVEC_HOME (default ./.ctxvec; or "
    "s3://BUCKET/PREFIX, cached in $CTXVEC_CACHE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# --- options shared by several commands -----------------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
# What an optional --config means when left out (``show_default`` prints it as the default)
NO_RECIPE = "built-in defaults"
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Recipe YAML (its "
                      "ingest/tokenizer sections are used).", show_default=NO_RECIPE)]


def set_opt(example: str) -> Any:
    """A repeatable ``--set KEY=VALUE`` option; ``example`` is one key the command reads."""
    return typer.Option("--set", metavar="KEY=VALUE",
                        help=f"Override a recipe key: --set {example} (repeatable).")


SetOpt = Annotated[list[str] | None, set_opt("ingest.near_dup.threshold=0.8")]


class UserError(UserInputError):
    """Bad command-line input: exit code 2."""


# --- running a command ----------------------------------------------------------------------


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


def reflow_doc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Join the wrapped lines of each docstring paragraph: Typer's command list keeps a
    docstring's line breaks, which left ragged one-word lines in ``ctxvec --help``."""
    if fn.__doc__:
        paragraphs = inspect.cleandoc(fn.__doc__).split("\n\n")
        fn.__doc__ = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    return fn


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body with clean stdout and exit codes that follow the contract: 0 success,
    2 bad input (``UserInputError``), 130 interrupted, 1 anything else."""

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

    return reflow_doc(wrapper)


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


# --- inputs: workspace and recipe -----------------------------------------------------------


def workspace() -> Workspace:
    """The workspace $CTXVEC_HOME names (a folder or a store URI)."""
    from ctxvec.workspace import Workspace  # lazy: keep start-up fast (pyarrow)

    return Workspace.from_env()


@contextlib.contextmanager
def writing(ws: Workspace) -> Iterator[Workspace]:
    """Hold the workspace's writer lock for a command that writes it (``Workspace.lock``):
    another writer's command exits 2 naming this one, or waits ``$CTXVEC_LOCK_TIMEOUT`` s."""
    with ws.lock("ctxvec " + " ".join(sys.argv[1:])):
        yield ws


def load_recipe(config: Path | None, overrides: list[str] | None) -> CtxvecConfig:
    """The recipe with its ``--set`` overrides; a bad one is a ConfigError (exit 2)."""
    from ctxvec.config import load_config  # lazy: keep start-up fast (pydantic)

    return load_config(config, list(overrides or []))


def prefect_env(ws_root: Path) -> None:
    """Prefect's local state lives in the workspace too, unless the user points elsewhere; the
    embedded server's telemetry writes race with the flows' on SQLite, so it is off. Prefect
    gives its ephemeral server 20 s to start, which a busy 2-core machine overran (2 runs in
    13 under load): ctxvec gives it 300 s unless the user set a value. The server itself is
    started by the flow command, watched so that it dies with this process
    (``ctxvec_flows.ephemeral``)."""
    os.environ.setdefault("PREFECT_HOME", str(ws_root / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")


# --- output ---------------------------------------------------------------------------------


def dump(obj: Any) -> str:
    """The one JSON object ``--json`` prints."""
    return json.dumps(obj, ensure_ascii=False, default=str)


def format_hits(hits: list[dict]) -> str:
    """Ranked document hits, one title line and one snippet line each."""
    out = []
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h["text"].split())[:160]
        title = f" [{h['title']}]" if h.get("title") else ""
        out.append(f"{rank:>3}. {h['score']:.4f}  {h['doc_id']}{title}\n       {snippet}")
    return "\n".join(out)


def format_check(c: dict, champion: str = "", challenger: str = "") -> str:
    """One gate check (``ctxvec.continual.gate.decide``): its numbers, or why it could not be
    measured."""
    head = f"{'ok  ' if c['passed'] else 'FAIL'} {c['metric']:<22}"
    if c["champion"] is None or c["challenger"] is None:  # an evaluation that could not run
        return f"{head} not measured: {c.get('why', '')}  {c['rule']}"
    return (f"{head} {champion}{c['champion']:.4f} -> {challenger}{c['challenger']:.4f} "
            f"({100 * c['relative_gain']:+.1f}%)  {c['rule']}")


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()) or "-"
