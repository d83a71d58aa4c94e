"""A served workspace (the tiny pipeline, run once per session) and a real uvicorn server in a
thread, shared by the HTTP API tests and the web page test."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
# STS is skipped (its score is not what these tests look at); everything else is the tiny recipe.
TINY_OVERRIDES = ["evaluate.sts=null", "index.factory=Flat"]


@dataclass(frozen=True)
class ServedWorkspace:
    home: Path
    summary: dict  # what `ctxvec run --json` printed


def ctxvec_cli(home: Path, *args: str, prefect_api: str | None = None
               ) -> subprocess.CompletedProcess:
    proc = run_cli(home, *args, prefect_api=prefect_api)
    if proc.returncode != 0:
        raise AssertionError(f"ctxvec {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def served_workspace(tmp_path_factory, prefect_api) -> ServedWorkspace:
    """The tiny pipeline run once, as a user runs it (its flow on the session's Prefect
    server): version 1 is the champion, with its index (and sense index)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        pytest.skip("MLFLOW_TRACKING_URI is set: these tests need the embedded workspace store")
    home = tmp_path_factory.mktemp("serve") / "home"
    home.mkdir()
    sets = [a for o in TINY_OVERRIDES for a in ("--set", o)]
    proc = ctxvec_cli(home, "run", "--config", str(TINY), *sets, "--json",
                      prefect_api=prefect_api)
    return ServedWorkspace(home, json.loads(proc.stdout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn_in_thread(app) -> Iterator[str]:
    """Serve ``app`` on a free loopback port from a thread; yield its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def registry_reads(monkeypatch) -> list[str]:
    """Every read the MLflow model registry store answers (a SQLite workspace) for this test's
    thread, by method name: what "resolved once" is counted in. Other threads (a served app's
    champion watcher polling in the background) are not counted."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    seen: list[str] = []
    test_thread = threading.get_ident()
    for attr in dir(SqlAlchemyStore):
        if attr.startswith(("get_", "search_")) and callable(getattr(SqlAlchemyStore, attr)):
            original = getattr(SqlAlchemyStore, attr)

            def counted(self, *a, _name=attr, _original=original, **k):
                if threading.get_ident() == test_thread:
                    seen.append(_name)
                return _original(self, *a, **k)

            monkeypatch.setattr(SqlAlchemyStore, attr, counted)
    return seen
