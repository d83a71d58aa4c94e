"""Shared fixtures: paths to the repo, the demo corpus and the shared evaluation data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Prefect's server telemetry writes race with the flow's on SQLite; off, as `ctxvec run` does.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# and its ephemeral server gets 120 s to start, not 20: a loaded 2-core machine overran 20 s
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CTXVEC_SHARED_DATA", REPO.parent / "shared" / "data"))
STS_DEV = SHARED_DATA / "stsbenchmark" / "sts-dev.csv"
DEMO = REPO / "data" / "demo"


@pytest.fixture
def workspace(tmp_path_factory, monkeypatch):
    """An empty workspace outside tmp_path, so tests can ingest tmp_path as a whole."""
    from ctxvec.workspace import Workspace

    home = tmp_path_factory.mktemp("ctxvec-home")
    monkeypatch.setenv("CTXVEC_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Workspace(home).ensure()


def needs_shared_data(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"shared data not found: {path}")
