"""Real Prefect and MLflow servers for tests: each a subprocess from the venv's bin folder, on a
free port of 127.0.0.1, with its state in a temporary folder, stopped (with everything it
spawned) when the block exits, whatever happened inside it.

    with running(prefect_spec(tmp / "prefect"), mlflow_spec(tmp / "mlflow")) as (api, uri):
        ...  # PREFECT_API_URL=api, MLFLOW_TRACKING_URI=uri

And a throwaway PostgreSQL cluster (the system's, e.g. Debian's ``postgresql`` package), for
MLflow's backend store as it runs beyond one machine:

    with postgres_server() as db, running(mlflow_spec(tmp / "mlflow", backend=db)) as (uri,):
        ...
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the venv's bin folder: prefect and mlflow come with it
# how long a server may take to answer its health check: generous, for a loaded 2-core machine
START_TIMEOUT = 300.0


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


def prefect_spec(folder: Path, scheduler: bool = True) -> Server:
    """``prefect server start`` with its own PREFECT_HOME (SQLite database) under ``folder``;
    its URL is the API's (``http://127.0.0.1:PORT/api``), the value for ``PREFECT_API_URL``.

    No UI (nothing to build or serve). Its services run (they record task runs from events and
    turn schedules into flow runs), the scheduler every 2 s instead of every minute; without
    ``scheduler`` (flows run directly, never from a deployment) the scheduler is off."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
            "--no-ui", "--analytics-off", "--no-late-runs"]
    env = clean_env(PREFECT_HOME=str(folder / "home"),
                    PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    if not scheduler:
        args.append("--no-scheduler")
    return Server(args, env, folder, url, f"{url}/health")


def mlflow_spec(folder: Path, backend: str | None = None) -> Server:
    """``mlflow server`` on SQLite under ``folder`` (or on the backend store URI ``backend``,
    e.g. a ``postgres_server``'s), serving artifacts itself from ``folder`` (clients upload and
    download through it, as with a remote store); its URL is the tracking URI."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    backend = backend or f"sqlite:///{folder / 'mlflow.db'}"
    args = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", backend,
            "--serve-artifacts", "--artifacts-destination", (folder / "artifacts").as_uri()]
    return Server(args, clean_env(), folder, url, f"{url}/health")


@contextlib.contextmanager
def background(args: list[str], log: Path, env: dict[str, str], cwd: Path | None = None,
               stdout: Path | None = None, grace: float = 3.0) -> Iterator[subprocess.Popen]:
    """Run ``args`` in its own process group with stderr (and stdout, unless ``stdout`` names a
    file of its own) in ``log``; on exit, SIGTERM it (and its children), SIGKILL after
    ``grace`` seconds. Should the test process be killed without its teardown (a SIGTERM to
    pytest), the kernel sends the child SIGTERM: no server outlives the run."""
    from ctxvec_flows.deployments import _die_with_parent

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as err, open(stdout or os.devnull, "wb") as out:
        proc = subprocess.Popen(args, stdout=out if stdout else err, stderr=err, env=env,
                                cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        yield proc
    finally:
        stop(proc, grace)


@contextlib.contextmanager
def running(*servers: Server, timeout: float = START_TIMEOUT) -> Iterator[list[str]]:
    """Start every server at once (they start in parallel), wait until each is healthy, yield
    their URLs; stop them all on exit."""
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(background(s.args, s.log, s.env, cwd=s.folder, grace=1))
                 for s in servers]  # test state: no need to wait for a graceful shutdown
        for s, proc in zip(servers, procs, strict=True):
            wait_healthy(s.health, proc, s.log, timeout)
        yield [s.url for s in servers]


@contextlib.contextmanager
def prefect_server(folder: Path, timeout: float = START_TIMEOUT,
                   scheduler: bool = True) -> Iterator[str]:
    """A real Prefect server (see ``prefect_spec``); yields its API URL."""
    with running(prefect_spec(folder, scheduler), timeout=timeout) as (url,):
        yield url


@contextlib.contextmanager
def mlflow_server(folder: Path, timeout: float = START_TIMEOUT) -> Iterator[str]:
    """A real MLflow tracking server (see ``mlflow_spec``); yields its tracking URI."""
    with running(mlflow_spec(folder), timeout=timeout) as (url,):
        yield url


# --- PostgreSQL -----------------------------------------------------------------------------

PG_PROGRAMS = ("initdb", "pg_ctl", "postgres")
PG_LIB = Path("/usr/lib/postgresql")  # Debian: one <major>/bin folder per installed version
PG_INSTALL = ("install PostgreSQL's server programs: `apt-get install -y postgresql` on Debian "
              "or Ubuntu (.ci/run does so when it runs as root), or put the folder that holds "
              "initdb and pg_ctl on PATH")


class PostgresMissing(RuntimeError):
    """PostgreSQL's server programs are not installed (or cannot run here); the message says
    how to install them. ``require_postgres`` turns it into a skip, except in CI."""


def require_postgres() -> Path:
    """``postgres_bindir()`` for a test that needs PostgreSQL. Where it is missing the test is
    skipped with the install hint as its reason, so a fresh machine with only Python passes;
    but not where the environment variable ``CI`` is set: CI installs PostgreSQL (.ci/run), so
    there a missing server is a broken machine and fails the test."""
    try:
        bindir = postgres_bindir()
        _cluster_owner()
    except PostgresMissing as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{e} (CI fails here instead of skipping)")
    return bindir


def postgres_bindir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: on PATH, else
    ``pg_config --bindir``, else the newest ``/usr/lib/postgresql/<major>/bin`` (Debian keeps
    the server programs off PATH there)."""
    candidates: list[Path] = []
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        candidates.append(Path(out))
    majors = PG_LIB.glob("*/bin")
    candidates += sorted(majors, key=lambda p: int(p.parent.name) if p.parent.name.isdigit()
                         else -1, reverse=True)
    for folder in candidates:
        if all(os.access(folder / p, os.X_OK) for p in PG_PROGRAMS):
            return folder
    raise PostgresMissing(f"PostgreSQL not found (looked for {', '.join(PG_PROGRAMS)} on PATH, "
                          f"in `pg_config --bindir` and {PG_LIB}/*/bin): {PG_INSTALL}")


def _cluster_owner() -> tuple[list[str], pwd.struct_passwd | None]:
    """How to run PostgreSQL's programs, which refuse to run as root: as ``postgres`` (through
    ``runuser``) when this process is root, as ourselves otherwise -> (command prefix, the
    user whose files the cluster's are, or None for ourselves)."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        user = None
    if runuser is None or user is None:
        raise PostgresMissing("PostgreSQL refuses to run as root and there is no `postgres` user "
                              f"(or no runuser) to run it as: {PG_INSTALL} (it creates the user), "
                              "or run the tests as a normal user")
    return [runuser, "-u", user.pw_name, "--"], user


def _run_pg(prefix: list[str], args: list[str], cwd: Path, timeout: float,
            log: Path | None = None) -> None:
    proc = subprocess.run([*prefix, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} {' '.join(args[1:])} exited "
                           f"{proc.returncode}:\n{proc.stdout}{proc.stderr}"
                           + (f"\nserver log:\n{tail(log)}" if log else ""))


@contextlib.contextmanager
def postgres_server(db: str = "mlflow", user: str = "ctxvec",
                    timeout: float = 60.0) -> Iterator[str]:
    """A throwaway PostgreSQL cluster: ``initdb`` into a fresh temporary folder, the server on
    a free port of 127.0.0.1 (and a Unix socket in that folder), database ``db`` owned by
    ``user`` (trust authentication: nothing but this host reaches it); yields its URL
    ``postgresql://USER@127.0.0.1:PORT/DB``. On exit the server stops (immediate shutdown: the
    data is thrown away) and the folder goes.

    The folder is made with ``tempfile``, not under pytest's ``tmp_path``, whose parents are
    private to the user running the tests: as root the cluster belongs to ``postgres``, which
    must reach it. Durability is off (fsync, full-page writes): it is a test's state."""
    import psycopg2

    bindir = postgres_bindir()
    prefix, owner = _cluster_owner()
    root = Path(tempfile.mkdtemp(prefix="ctxvec-postgres-"))
    data, log = root / "data", root / "server.log"
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        _run_pg(prefix, [str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust",
                         "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                root, timeout)
        port = free_port()
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
                   "-c full_page_writes=off -c synchronous_commit=off")
        # -w: pg_ctl returns once the server accepts connections (or fails with its log)
        _run_pg(prefix, [str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(log),
                         "-w", "-t", str(int(timeout)), "-o", options], root, timeout + 10, log)
        try:
            deadline = time.monotonic() + timeout
            while True:  # pg_ctl has waited already; this is the first real client
                try:
                    conn = psycopg2.connect(host="127.0.0.1", port=port, user=user,
                                            dbname="postgres", connect_timeout=5)
                    break
                except psycopg2.OperationalError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"postgres on :{port} refuses connections after "
                                           f"{timeout:.0f} s:\n{tail(log)}") from None
                    time.sleep(0.2)
            try:
                conn.autocommit = True  # CREATE DATABASE runs outside a transaction
                with conn.cursor() as cur:
                    cur.execute(f'CREATE DATABASE "{db}" OWNER "{user}"')
            finally:
                conn.close()
            yield f"postgresql://{user}@127.0.0.1:{port}/{db}"
        finally:
            _run_pg(prefix, [str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m",
                             "immediate", "-w"], root, 60, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)
