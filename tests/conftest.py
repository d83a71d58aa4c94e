"""Shared fixtures: paths to the repo, the demo corpus and the shared evaluation data, and the
session's Prefect server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Prefect's server telemetry writes race with the flow's on SQLite; off, as `ctxvec run` does.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# and an ephemeral server gets 300 s to start, not 20: a loaded 2-core machine overran 20 s
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

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


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """One Prefect server for the whole session (``prefect server start`` on its own SQLite,
    tests/servers.py), started by the first test that needs it -> its API URL.

    Flow tests run against it instead of each CLI call or test starting its own ephemeral
    server: on a loaded 2-core machine those overran their start-up timeout. Tests hand it to
    the CLI processes they start (``run_cli(..., prefect_api=...)``) and point this process's
    client at it (``prefect_client``). Tests of the embedded default (the README's
    ``ctxvec run``, tests/flows/test_pipeline.py) start no server and do not use it."""
    from tests.servers import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect-session"), scheduler=False) as api:
        yield api


@pytest.fixture
def prefect_client(prefect_api) -> Iterator[str]:
    """This process's Prefect client (flows run in-process, API reads) on the session's
    server for the test -> its API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield prefect_api
