"""Prefect deployments of the pipeline and of the continual update, built from schedule specs.

A ``ScheduleSpec`` says which flow (``pipeline`` or ``continual``) runs which recipe, with which
overrides, into which workspace, when (a cron string or an interval in seconds, in a timezone),
with which tags, and optionally on which work pool. ``ctxvec schedule`` builds the specs from its
options and then either

- serves them (``serve``): this process registers the deployments and runs their flow runs
  itself, like ``prefect serve``, until stopped (their schedules are paused when it stops); or
- applies them to a work pool (``apply``): the deployments are registered and the process exits;
  workers of the pool (``prefect worker start --pool POOL``) run the flow runs.

Deployments point at the installed modules (``ctxvec_flows.pipeline.pipeline``), so they load
wherever ctxvec is installed, whatever the working folder. They go to the Prefect API that
``PREFECT_API_URL`` names. With it unset, serving starts a local Prefect server for as long as it
serves (``local_server``), on the same local database the ephemeral default uses
(``$PREFECT_HOME``): Prefect's ephemeral server runs no scheduler, so under it schedules would
never fire. ``infra/prefect.yaml`` declares the same deployments for ``prefect deploy``.

The continual flow is imported only when a spec asks for it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxvec.config import load_config
from ctxvec.errors import UserInputError
from ctxvec.storage import is_uri

# flow key -> (module, function): the entrypoint a deployment records
FLOWS = {
    "pipeline": ("ctxvec_flows.pipeline", "pipeline"),
    "continual": ("ctxvec_flows.continual", "continual"),
}
DEFAULT_TAGS = ("ctxvec",)


class ScheduleError(UserInputError):
    """A schedule spec the user can fix (bad cron, missing recipe, ...): CLI exit code 2."""


@dataclass(frozen=True)
class ScheduleSpec:
    """One deployment: a flow on a recipe, on a schedule. Validated on construction."""

    name: str  # the deployment's name; Prefect shows it as <flow name>/<name>
    flow: str  # pipeline | continual
    recipe: str  # recipe YAML; stored as an absolute path
    overrides: tuple[str, ...] = ()  # dotted key=value, as --set takes them
    cron: str | None = None  # e.g. "0 2 * * *": nightly at 02:00
    interval: float | None = None  # seconds between runs (instead of cron)
    timezone: str = "UTC"  # IANA name; cron times are read in it
    home: str | None = None  # workspace folder or URI; None: $CTXVEC_HOME where it runs
    tags: tuple[str, ...] = DEFAULT_TAGS
    work_pool: str | None = None  # None: served by `ctxvec schedule` itself
    max_active_runs: int | None = 1  # runs of this deployment at once; later ones wait
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.flow not in FLOWS:
            raise ScheduleError(f"flow must be one of {', '.join(FLOWS)}, got {self.flow!r}")
        if not self.name or any(c in self.name for c in "/%&><"):
            raise ScheduleError(f"deployment name {self.name!r} must be non-empty and hold "
                                "none of / % & > <")
        recipe = Path(self.recipe).expanduser()
        if not recipe.is_file():
            raise ScheduleError(f"recipe not found: {self.recipe} (a YAML file, e.g. "
                                "configs/demo.yaml)")
        object.__setattr__(self, "recipe", str(recipe.resolve()))
        if self.home is not None:
            # a store URI (s3://bucket/prefix) is passed on as it is; a folder made absolute
            object.__setattr__(self, "home", self.home if is_uri(self.home)
                               else str(Path(self.home).expanduser().resolve()))
        object.__setattr__(self, "overrides", tuple(self.overrides))
        object.__setattr__(self, "tags", tuple(dict.fromkeys([*DEFAULT_TAGS, *self.tags])))
        self._check_schedule()
        load_config(self.recipe, list(self.overrides))  # ConfigError names the bad key

    def _check_schedule(self) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from prefect.client.schemas.schedules import CronSchedule
        from pydantic import ValidationError

        where = f"deployment {self.name!r}"
        if (self.cron is None) == (self.interval is None):
            raise ScheduleError(f"{where}: give a cron string or an interval in seconds "
                                "(exactly one)")
        if self.interval is not None and not self.interval > 0:
            raise ScheduleError(f"{where}: the interval must be a positive number of seconds, "
                                f"got {self.interval}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ScheduleError(f"{where}: unknown timezone {self.timezone!r} (an IANA name: "
                                "UTC, Europe/Paris, America/New_York)") from None
        if self.cron is not None:
            try:
                CronSchedule(cron=self.cron, timezone=self.timezone)
            except ValidationError:
                raise ScheduleError(
                    f"{where}: invalid cron string {self.cron!r}: five fields, minute hour "
                    "day-of-month month day-of-week, e.g. '0 2 * * *' (02:00 every day) or "
                    "'*/30 * * * *' (every 30 minutes)") from None

    @property
    def flow_name(self) -> str:
        return f"ctxvec-{self.flow}"

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"

    @property
    def entrypoint(self) -> str:
        module, fn = FLOWS[self.flow]
        return f"{module}.{fn}"

    @property
    def parameters(self) -> dict[str, Any]:
        """The flow's arguments for every run: ``flow(config, overrides, home)``."""
        return {"config": self.recipe, "overrides": list(self.overrides), "home": self.home}

    def schedule(self):
        """The ``prefect.schedules.Schedule`` of this deployment."""
        from prefect.schedules import Cron, Interval

        if self.cron is not None:
            return Cron(self.cron, timezone=self.timezone)
        return Interval(dt.timedelta(seconds=self.interval), timezone=self.timezone)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.full_name, "flow": self.flow, "entrypoint": self.entrypoint,
            "schedule": {"cron": self.cron, "interval_seconds": self.interval,
                         "timezone": self.timezone},
            "parameters": self.parameters, "tags": list(self.tags),
            "work_pool": self.work_pool, "max_active_runs": self.max_active_runs,
        }

    def to_deployment(self):
        """The Prefect ``RunnerDeployment`` (not registered yet)."""
        from prefect.deployments.runner import EntrypointType

        return load_flow(self.flow).to_deployment(
            name=self.name,
            schedule=self.schedule(),
            parameters=self.parameters,
            tags=list(self.tags),
            description=self.description or f"ctxvec {self.flow} on {Path(self.recipe).name}",
            work_pool_name=self.work_pool,
            concurrency_limit=self.max_active_runs,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )


def load_flow(kind: str):
    """The Prefect flow object of ``pipeline`` or ``continual`` (imported on first use)."""
    module, fn = FLOWS[kind]
    try:
        return getattr(importlib.import_module(module), fn)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise ScheduleError(f"the {kind} flow is not installed ({module}, flows/{kind}.py): "
                            "reinstall ctxvec (pip install -e .)") from None


def serve(specs: list[ScheduleSpec], limit: int | None = None) -> None:
    """Register the deployments and run their flow runs in this process until interrupted
    (SIGINT/SIGTERM); their schedules are paused on the way out, as ``prefect serve`` does.
    ``limit``: flow runs at once (default: no limit)."""
    from prefect import serve as prefect_serve

    pooled = [s.full_name for s in specs if s.work_pool]
    if pooled:
        raise ScheduleError(f"{', '.join(pooled)}: a served deployment has no work pool; use "
                            "apply() to hand deployments to a pool's workers")
    prefect_serve(*[s.to_deployment() for s in specs], limit=limit,
                  print_starting_message=False)


def apply(specs: list[ScheduleSpec]) -> list[dict[str, Any]]:
    """Register each deployment with its work pool (which must exist) and return their ids;
    the pool's workers run them."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    missing = [s.full_name for s in specs if not s.work_pool]
    if missing:
        raise ScheduleError(f"{', '.join(missing)}: apply() needs a work pool")
    with get_client(sync_client=True) as client:
        for pool in {s.work_pool for s in specs}:
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                raise ScheduleError(
                    f"work pool {pool!r} not found on {client.api_url}: create it first "
                    f"(prefect work-pool create {pool} --type process)") from None
    return [{**s.to_dict(), "id": str(s.to_deployment().apply(work_pool_name=s.work_pool))}
            for s in specs]


def api_url() -> str | None:
    """The Prefect API these deployments go to; None: the local ephemeral server."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextlib.contextmanager
def local_server(port: int = 4200, timeout: float = 300.0) -> Iterator[str]:
    """``prefect server start`` (API, UI and scheduler) on 127.0.0.1 for the duration of the
    block, on this process's ``$PREFECT_HOME`` database; yields its API URL, which the block
    (and every flow run it starts) uses as ``PREFECT_API_URL``. ``port`` if free, else any.
    The server's log: ``$PREFECT_HOME/server.log``. ``timeout``: seconds it may take to answer
    (300, as for the ephemeral server: a loaded 2-core machine overran 20)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = Path(PREFECT_HOME.value()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    for attempt in range(3):
        # Free when checked, but another process may bind it before the server does (two
        # `ctxvec schedule` at once): then ours exits, and the next try takes any free port.
        port = port if attempt == 0 and _port_free(port) else _port_free(0)
        proc = _start_server(port, env, home / "server.log")
        try:
            _wait_healthy(f"http://127.0.0.1:{port}/api/health", proc, timeout,
                          home / "server.log", port)
            break
        except _LostPort:
            _stop(proc)
        except BaseException:
            _stop(proc)
            raise
    else:
        raise RuntimeError(f"the local Prefect server could not keep a port; see "
                           f"{home / 'server.log'}")
    url = f"http://127.0.0.1:{port}/api"
    saved = os.environ.get("PREFECT_API_URL")
    try:
        os.environ["PREFECT_API_URL"] = url  # for the subprocesses flow runs execute in
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved
        _stop(proc)


class _LostPort(RuntimeError):
    """The server exited before it answered while another process held its port."""


def _start_server(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        # Its own process group (Ctrl-C reaches this process only, which then stops the server
        # after the runs), and a SIGTERM from the kernel should this process die without that.
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _die_with_parent() -> None:
    """In a child before it runs: have the kernel send it SIGTERM when its parent dies (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _port_free(port: int) -> int:
    """``port`` if nothing listens on it (0: any free port), else 0."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log: Path,
                  port: int) -> None:
    """Until ``url`` answers 200 from a server in ``proc``'s process tree listening on ``port``
    (an answer from another process's server on that port does not count)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            cls = _LostPort if not _port_free(port) else RuntimeError
            raise cls(f"the local Prefect server exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200 and _owns_port(proc.pid, port) is not False:
                    return
        time.sleep(0.25)
    raise TimeoutError(f"the local Prefect server did not answer {url} in {timeout:.0f} s; "
                       f"see {log}")


def _owns_port(pid: int, port: int) -> bool | None:
    """Whether ``pid`` or one of its descendants holds the socket listening on ``port``
    (Linux's ``/proc``); None where that cannot be read."""
    try:
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as f:
                for line in list(f)[1:]:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{cols[9]}]")
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry))
    except OSError:
        return None
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, ()))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{p}/fd/{fd}") in inodes:
                        return True
    return False