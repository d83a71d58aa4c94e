"""Every ``--help`` page, rendered as a user sees it (``COLUMNS=100``): no raw placeholders
(``<bool>``, ``<list[str]>``, ``{version}``, ``\\[``), no stray spaces in the texts, and a
default shown for every option that has one.

Cheap: the command tree is built once and each page is rendered in process (no model, no
workspace).
"""

from __future__ import annotations

import functools
import re

import pytest
import typer
from typer.testing import CliRunner

from ctxvec.cli import app

# Typer's type labels and escapes that must not reach a page: a flag takes no value (so no
# <bool>), and a value is named as click names it (TEXT, INTEGER, PATH, ...).
RAW = re.compile(r"<(?:bool|str|int|float|path|file|directory|text|uuid|datetime|list\[[^\]]*\]"
                 r"|int range|float range)>|\\\[")
LOWER_ARG = re.compile(r"[{\[][a-z_]+[}\]]")  # an argument named in lower case on the usage line

# Options that are one of several inputs of their command: left out, they are simply not used,
# so they have no default to show.
ALTERNATIVES = {
    ("query", "--id"), ("query", "--vector-file"), ("query", "--word"), ("query", "--context"),
    ("serve", "--api-key-file"),
    ("schedule", "--recipe"), ("schedule", "--cron"), ("schedule", "--interval"),
    ("schedule", "--continual-recipe"), ("schedule", "--continual-cron"),
    ("schedule", "--continual-interval"),
}


def _tree() -> list[tuple[list[str], object]]:
    """(path, command) for the root, every command and every subcommand."""
    out: list[tuple[list[str], object]] = []

    def walk(cmd, path: list[str]) -> None:
        out.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(ROOT, [])
    return out


ROOT = typer.main.get_command(app)
TREE = _tree()
PATHS = [" ".join(path) or "(root)" for path, _ in TREE]


@functools.cache
def _render(path: tuple[str, ...]) -> str:
    """``ctxvec PATH --help`` as printed at 100 columns, from the tree built once above."""
    with CliRunner().isolation(env={"COLUMNS": "100"}) as (out, _err, *_):
        code = ROOT.main([*path, "--help"], prog_name="ctxvec", standalone_mode=False)
        page = out.getvalue().decode()
    assert code == 0, page
    return page


@pytest.mark.parametrize("path", [p for p, _ in TREE], ids=PATHS)
def test_help_page_has_no_raw_placeholders(path):
    page = _render(tuple(path))
    assert "Usage:" in page
    assert RAW.findall(page) == [], page
    usage = next(line for line in page.splitlines() if "Usage:" in line)
    assert LOWER_ARG.findall(usage) == [], usage


def _texts(cmd) -> list[tuple[str, str]]:
    texts = [("help", cmd.help or ""), ("short_help", getattr(cmd, "short_help", None) or "")]
    for p in cmd.params:
        texts.append((p.name, getattr(p, "help", None) or ""))
        if isinstance(getattr(p, "show_default", None), str):
            texts.append((f"{p.name} default", p.show_default))
    return texts


@pytest.mark.parametrize("path, cmd", TREE, ids=PATHS)
def test_help_texts_have_no_stray_spaces(path, cmd):
    for what, text in _texts(cmd):
        assert text == text.strip(), (what, text)
        assert "  " not in text, (what, text)
        assert not re.search(r"\s[,;:)]|\s\.(\s|$)", text), (what, text)
        assert not re.search(r"\(\s", text), (what, text)


@pytest.mark.parametrize("path, cmd", TREE, ids=PATHS)
def test_every_option_with_a_default_shows_it(path, cmd):
    name = " ".join(path)
    page = _render(tuple(path))
    for p in cmd.params:
        if p.param_type_name != "option" or p.required or p.multiple or p.is_flag:
            continue
        opt = max(p.opts, key=len)
        if (name, opt) in ALTERNATIVES:
            assert p.default is None, f"{name} {opt} has a default: drop it from ALTERNATIVES"
            continue
        described = isinstance(p.show_default, str) and p.show_default
        assert described or (p.default is not None and p.show_default is not False), \
            f"{name} {opt}: no default shown; declare show_default='...' saying what happens " \
            "when it is left out"
    assert page.count("[default:") >= sum(
        1 for p in cmd.params if p.param_type_name == "option" and not p.required
        and not p.is_flag and not p.multiple and (name, max(p.opts, key=len)) not in ALTERNATIVES)


def test_flags_show_no_value_placeholder():
    page = _render(("query",))
    line = next(ln for ln in page.splitlines() if "--json" in ln)
    assert "Print one JSON object" in line and "<" not in line and "TEXT" not in line
    k_line = next(ln for ln in page.splitlines() if "--k" in ln)
    assert "INTEGER" in k_line and "[default: 10]" in k_line
