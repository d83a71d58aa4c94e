"""Real Prefect and MLflow servers for tests: each a subprocess from the venv's bin folder, on a
free port of 127.0.0.1, with its state in a temporary folder, stopped (with everything it
spawned) when the block exits, whatever happened inside it.

    with running(prefect_spec(tmp / "prefect"), mlflow_spec(tmp / "mlflow")) as (api, uri):
        ...  # PREFECT_API_URL=api, MLFLOW_TRACKING_URI=uri
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
from dataclasses import dataclass
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


def stop(proc: subprocess.Popen, grace: float = 3.0) -> None:
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


@dataclass(frozen=True)
class Server:
    """How to start one server: its command line, environment, log file and health URL."""

    args: list[str]
    env: dict[str, str]
    folder: Path
    url: str  # what clients are given
    health: str

    @property
    def log(self) -> Path:
        return self.folder / "server.log"


def prefect_spec(folder: Path) -> Server:
    """``prefect server start`` with its own PREFECT_HOME (SQLite database) under ``folder``;
    its URL is the API's (``http://127.0.0.1:PORT/api``), the value for ``PREFECT_API_URL``.

    No UI (nothing to build or serve). Its services run (they record task runs from events and
    turn schedules into flow runs), the scheduler every 2 s instead of every minute."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
            "--no-ui", "--analytics-off", "--no-late-runs"]
    env = clean_env(PREFECT_HOME=str(folder / "home"),
                    PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    return Server(args, env, folder, url, f"{url}/health")


def mlflow_spec(folder: Path) -> Server:
    """``mlflow server`` on SQLite under ``folder``, serving artifacts itself (clients upload and
    download through it, as with a remote store); its URL is the tracking URI."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", (folder / "artifacts").as_uri()]
    return Server(args, clean_env(), folder, url, f"{url}/health")


@contextlib.contextmanager
def background(args: list[str], log: Path, env: dict[str, str], cwd: Path | None = None,
               stdout: Path | None = None, grace: float = 3.0) -> Iterator[subprocess.Popen]:
    """Run ``args`` in its own process group with stderr (and stdout, unless ``stdout`` names a
    file of its own) in ``log``; on exit, SIGTERM it (and its children), SIGKILL after
    ``grace`` seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as err, open(stdout or os.devnull, "wb") as out:
        proc = subprocess.Popen(args, stdout=out if stdout else err, stderr=err, env=env,
                                cwd=cwd, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc, grace)


@contextlib.contextmanager
def running(*servers: Server, timeout: float = 120.0) -> Iterator[list[str]]:
    """Start every server at once (they start in parallel), wait until each is healthy, yield
    their URLs; stop them all on exit."""
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(background(s.args, s.log, s.env, cwd=s.folder, grace=1))
                 for s in servers]  # test state: no need to wait for a graceful shutdown
        for s, proc in zip(servers, procs, strict=True):
            wait_healthy(s.health, proc, s.log, timeout)
        yield [s.url for s in servers]


@contextlib.contextmanager
def prefect_server(folder: Path, timeout: float = 120.0) -> Iterator[str]:
    """A real Prefect server (see ``prefect_spec``); yields its API URL."""
    with running(prefect_spec(folder), timeout=timeout) as (url,):
        yield url


@contextlib.contextmanager
def mlflow_server(folder: Path, timeout: float = 120.0) -> Iterator[str]:
    """A real MLflow tracking server (see ``mlflow_spec``); yields its tracking URI."""
    with running(mlflow_spec(folder), timeout=timeout) as (url,):
        yield url
