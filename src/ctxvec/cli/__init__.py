"""The ``ctxvec`` command line (Typer). Each command parses its options, calls one library
function and prints a summary; with ``--json`` it prints exactly one JSON object on stdout.

Exit codes: 0 success, 2 bad arguments, config or input data, 1 any other failure. Logs and
progress bars go to stderr; so does anything a library prints while a command runs (file
descriptor 1 is pointed at stderr until the result is printed), so ``--json`` output is clean.

One module per command group. The commands are registered here, in the order ``ctxvec --help``
lists them (and the command groups after them).
"""

from __future__ import annotations

from ctxvec.cli import data, embed, export, pipeline, query, schedule, serve, train
from ctxvec.cli._common import app
from ctxvec.cli.data import tokenizer_app
from ctxvec.cli.evaluate import eval_app
from ctxvec.cli.models import models_app
from ctxvec.cli.workspace import workspace_app

for _fn in (pipeline.run, pipeline.update, data.ingest, train.pretrain, train.finetune,
            query.query, query.explain, serve.serve, embed.encode, embed.embed,
            export.export, schedule.schedule):
    app.command()(_fn)
app.add_typer(eval_app, name="eval")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(models_app, name="models")
app.add_typer(workspace_app, name="workspace")

__all__ = ["app", "main"]


def main() -> None:
    app()
