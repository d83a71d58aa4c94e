"""pyproject.toml lists packages explicitly (flows/ installs as ctxvec_flows): keep it complete,
or a non-editable install silently lacks a subpackage."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_is_listed():
    """Every folder of modules, and every folder of package data (the page's static/), is
    listed: setuptools warns on each install about an importable folder left out."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {".".join(p.parent.relative_to(REPO / "src").parts)
             for p in (REPO / "src" / "ctxvec").rglob("__init__.py")}
    assert found | set(setuptools["package-data"]) | {"ctxvec_flows"} == listed


def test_flows_are_reached_through_the_src_layout():
    """src/ctxvec_flows is a link to flows/: every package under src/ keeps an editable install
    a plain .pth entry (setuptools prints a warning box for any other layout)."""
    link = REPO / "src" / "ctxvec_flows"
    assert link.is_symlink() and link.resolve() == (REPO / "flows").resolve()
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"": "src"}
