"""Real Prefect and MLflow servers for tests: each a subprocess from the venv's bin folder, on a
free port of 127.0.0.1, with its state in a temporary folder, stopped (with everything it
spawned) when the block exits, whatever happened inside it.

    with prefect_server(tmp / "prefect") as api_url, mlflow_server(tmp / "mlflow") as uri:
        ...  # PREFECT_API_URL=api_url, MLFLOW_TRACKING_URI=uri
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's bin folder: prefect and mlflow come with it


def free_port() -> int:
    """A port nothing listens on now (the OS picks it for a socket bound to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any PREFECT_* or MLFLOW_* setting, plus ``extra``:
    a server or client started with it sees only what the test gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.update(extra)
    return env


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), then
    SIGKILL whatever is left after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # the leader may be gone while its children (uvicorn or gunicorn workers) are not
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


@contextlib.contextmanager
def background(args: list[str], log: Path, env: dict[str, str],
               cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """Run ``args`` in its own process group with stdout and stderr in ``log``; stop it (and
    its children) on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def prefect_server(folder: Path, timeout: float = 90.0) -> Iterator[str]:
    """``prefect server start`` with its own PREFECT_HOME (SQLite database) under ``folder``;
    yields the API URL (``http://127.0.0.1:PORT/api``), the value for ``PREFECT_API_URL``.

    No UI (nothing to build or serve), and no background services: the API alone stores
    deployments and schedules and hands runs to runners and workers."""
    port = free_port()
    env = clean_env(PREFECT_HOME=str(folder / "home"))
    args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
            "--no-ui", "--no-services", "--analytics-off"]
    with background(args, folder / "server.log", env, cwd=folder) as proc:
        url = f"http://127.0.0.1:{port}/api"
        wait_healthy(f"{url}/health", proc, folder / "server.log", timeout)
        yield url


@contextlib.contextmanager
def mlflow_server(folder: Path, timeout: float = 90.0) -> Iterator[str]:
    """``mlflow server`` on SQLite under ``folder``, serving artifacts itself (clients upload and
    download through it, as with a remote store); yields the tracking URI."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    args = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", (folder / "artifacts").as_uri()]
    with background(args, folder / "server.log", clean_env(), cwd=folder) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health", proc, folder / "server.log", timeout)
        yield url
