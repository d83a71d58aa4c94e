"""How ``--help`` names what a parameter takes.

Typer (0.29) labels each parameter with its Python type: ``--json <bool>`` for a flag, which
takes no value, ``--set <list[str]>``, and ``{version}`` for a required argument on the usage
line. ``HelpGroup``, the root command's class, replaces those once, when the command tree is
built, with the names click users know: nothing for a flag, TEXT, INTEGER, FLOAT or PATH for a
value, and the argument's name in capitals (``{VERSION}``, ``[TEXT]``). A metavar a command
declares itself (``--set KEY=VALUE``) is kept.

Defaults a parameter cannot hold as a value (``the newest snapshot``) are declared with
``show_default="..."`` on the option, which Typer prints as ``[default: (...)]`` like any other
default; tests/unit/test_help.py checks every page.
"""

from __future__ import annotations

import re
from typing import Any

import typer
import typer.core

# Typer's labels -> click's
_LABELS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "file": "PATH",
           "directory": "PATH", "int range": "INTEGER", "float range": "FLOAT"}
_LIST = re.compile(r"^list\[(.*)\]$")


def _label(typer_label: str) -> str | None:
    """``<list[str]>`` -> TEXT, ``<int range>`` -> INTEGER; None for a label not known here."""
    inner = typer_label.strip("<>").removesuffix("...")
    m = _LIST.match(inner)
    return _LABELS.get(m.group(1) if m else inner)


def _tidy_param(param: Any, ctx: Any) -> None:
    if param.metavar is not None:
        return
    label = _label(param.display_type(ctx)) if hasattr(param, "display_type") else None
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        param.metavar = ""  # a flag takes no value: show none
    elif param.param_type_name == "argument":
        param.metavar = param.name.upper()
        if label:  # Typer shows an argument's type apart from its name: name that too
            param.display_type_rich = lambda ctx, _label=label: _label
    elif label:
        param.metavar = label


def tidy(cmd: Any) -> None:
    """Name every parameter of ``cmd`` and of its subcommands, the help option included."""
    ctx = typer.Context(cmd)
    for param in cmd.params:
        _tidy_param(param, ctx)
    help_option = cmd.get_help_option(ctx)
    if help_option is not None:
        _tidy_param(help_option, ctx)
    for sub in getattr(cmd, "commands", {}).values():
        tidy(sub)


class HelpGroup(typer.core.TyperGroup):
    """The root group: its tree is complete when it is built (Typer builds the subcommands and
    subgroups first), so it names every parameter once, here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tidy(self)
