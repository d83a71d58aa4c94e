"""pyproject.toml lists packages explicitly (flows/ installs as ctxvec_flows): keep it complete,
or a non-editable install silently lacks a subpackage."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_is_listed():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    found = {".".join(p.parent.relative_to(REPO / "src").parts)
             for p in (REPO / "src").rglob("__init__.py")}
    assert found | {"ctxvec_flows"} == listed
