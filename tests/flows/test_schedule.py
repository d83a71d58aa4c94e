"""Scheduling against real servers: a ``prefect server`` and an ``mlflow server``, subprocesses
on free ports with their state in temporary folders (tests/servers.py), shared by the module.

1. ``ctxvec schedule`` serves the pipeline and the continual deployments (a subprocess, as a
   user runs it): both are visible on the server with their schedules, the scheduler turns the
   nightly cron into flow runs at 02:00, and a run triggered through the server completes and
   registers version 1 in the MLflow server, its training under the ``gpu-train`` limit.
2. ``infra/prefect.yaml`` with the README's commands: two process work pools, ``prefect deploy``,
   a worker of the CPU pool; the smoke deployment, pointed at the same workspace and corpus,
   runs there with every stage after ingest cached (the registry check goes to the server).
3. ``ctxvec schedule`` rejects bad input up front with exit code 2, and ``--dry-run --json``
   prints the deployments without registering anything.

The embedded default (no servers) is what tests/flows/test_pipeline.py and test_caching.py use.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.runs import small_run_overrides, task_runs, write_corpus
from tests.helpers import REPO, TINY
from tests.servers import BIN, background, clean_env, mlflow_spec, prefect_spec, running, tail

GPU_TAG = "gpu-train"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(Prefect API URL, MLflow tracking URI); this process's Prefect client points at the
    former while the module runs, and the ``gpu-train`` concurrency limit exists there."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("servers")
    with running(prefect_spec(root / "prefect"), mlflow_spec(root / "mlflow")) as (api, uri):
        with temporary_settings(updates={PREFECT_API_URL: api}):
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=1)
            yield api, uri


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace and the overrides that point the tiny recipe at a small corpus."""
    root = tmp_path_factory.mktemp("schedule")
    return root / "home", small_run_overrides(write_corpus(root / "corpus"))


def wait_for(what: str, probe, timeout: float, proc: subprocess.Popen | None = None,
             log: Path | None = None):
    """Poll ``probe()`` until it returns something truthy; fail with ``log`` if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited {proc.returncode}:\n{tail(log)}")
        if value := probe():
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s" + (f"\n{tail(log)}" if log else ""))


def deployment(name: str):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def deployment_schedules(dep) -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_schedules(dep.id)


def scheduled_runs(dep) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50)
    return [r for r in runs if r.state and r.state.is_scheduled()]


@pytest.fixture(scope="module")
def served(servers, workspace, tmp_path_factory):
    """``ctxvec schedule`` serving both deployments, and one pipeline run triggered through the
    server -> (deployments by name, the finished flow run, the stdout JSON of the command)."""
    from prefect.deployments import run_deployment

    api, uri = servers
    home, overrides = workspace
    logs = tmp_path_factory.mktemp("serve")
    args = [sys.executable, "-m", "ctxvec.cli", "schedule", "--recipe", str(TINY),
            "--cron", "0 2 * * *", "--name", "served",
            *[x for o in overrides for x in ("--set", o)],
            # a cron, not an interval: an interval's first run is due at once, and a continual
            # update running next to the triggered pipeline run would change what it finds
            "--continual-recipe", str(TINY), "--continual-cron", "0 3 * * *",
            "--continual-name", "served",
            "--home", str(home), "--tag", "test", "--json"]
    env = clean_env(PREFECT_API_URL=api, MLFLOW_TRACKING_URI=uri)
    with background(args, logs / "stderr.log", env, cwd=REPO, stdout=logs / "stdout",
                    grace=15) as proc:
        names = ["ctxvec-pipeline/served", "ctxvec-continual/served"]

        def registered() -> list | None:
            deps = [deployment(n) for n in names]
            return deps if all(deps) else None

        deps = wait_for("deployments registered", registered, 90, proc, logs / "stderr.log")
        run = run_deployment(names[0], timeout=300)
        assert run.state.is_completed(), f"{run.state}\n{tail(logs / 'stderr.log')}"
        printed = json.loads((logs / "stdout").read_text().splitlines()[0])
        yield dict(zip(names, deps, strict=True)), run, printed
    assert proc.returncode is not None  # stopped, with its children


def test_served_deployments_are_on_the_server_with_their_schedules(served, workspace):
    deps, _, printed = served
    home, overrides = workspace
    nightly, continual = deps["ctxvec-pipeline/served"], deps["ctxvec-continual/served"]
    assert nightly.entrypoint == "ctxvec_flows.pipeline.pipeline"
    assert continual.entrypoint == "ctxvec_flows.continual.continual"
    assert nightly.parameters == {"config": str(TINY), "overrides": overrides,
                                  "home": str(home)}
    assert set(nightly.tags) == {"ctxvec", "test"}
    (cron,) = deployment_schedules(nightly)
    assert cron.active and cron.schedule.cron == "0 2 * * *" and cron.schedule.timezone == "UTC"
    (cron3,) = deployment_schedules(continual)
    assert cron3.active and cron3.schedule.cron == "0 3 * * *"
    # the server's scheduler turns the cron into upcoming runs at 02:00 UTC
    runs = wait_for("scheduled nightly runs", lambda: scheduled_runs(nightly), 30)
    assert all(r.expected_start_time.astimezone(dt.UTC).time() == dt.time(2, 0) for r in runs)
    # what the command printed is what it registered
    assert printed["mode"] == "serve" and printed["prefect_api_url"].endswith("/api")
    assert [d["name"] for d in printed["deployments"]] == list(deps)


def test_triggered_run_registers_a_version_in_the_mlflow_server(served, servers):
    from mlflow import MlflowClient

    _, run, _ = served
    _, uri = servers
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not a global one
    (version,) = client.search_model_versions("name='ctxvec-encoder'")
    assert str(version.version) == "1"
    assert str(client.get_model_version_by_alias("ctxvec-encoder", "champion").version) == "1"
    assert version.tags["index_uri"] and version.tags["data_snapshot"]
    assert client.get_run(version.run_id).data.params["train.steps"] == "12"
    tasks = task_runs(run.id)
    assert tasks["train"].state.name == "Completed" and GPU_TAG in tasks["train"].tags
    assert tasks["register"].state.name == "Completed"

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect_client:
        limit = prefect_client.read_concurrency_limit_by_tag(GPU_TAG)
    assert limit.concurrency_limit == 1 and not limit.active_slots  # held, then released


def prefect_cli(api: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=REPO,
                          env=env or clean_env(PREFECT_API_URL=api), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_prefect_yaml_deploys_to_work_pools_and_a_worker_runs_it(
        served, servers, workspace, tmp_path):
    from prefect.deployments import run_deployment

    api, uri = servers
    home, overrides = workspace
    for pool in ("ctxvec-cpu", "ctxvec-gpu"):  # as infra/README.md says
        prefect_cli(api, "work-pool", "create", pool, "--type", "process")
    prefect_cli(api, "deploy", "--all", "--prefect-file", "infra/prefect.yaml")
    nightly, smoke = deployment("ctxvec-pipeline/nightly"), deployment("ctxvec-pipeline/smoke")
    assert nightly.work_pool_name == "ctxvec-gpu" and smoke.work_pool_name == "ctxvec-cpu"
    assert nightly.entrypoint == "flows/pipeline.py:pipeline"
    continual = deployment("ctxvec-continual/continual")
    assert continual.entrypoint == "flows/continual.py:continual"
    assert continual.work_pool_name == "ctxvec-gpu"
    (cron,) = deployment_schedules(smoke)
    assert cron.schedule.cron == "30 1 * * *"

    env = clean_env(PREFECT_API_URL=api, MLFLOW_TRACKING_URI=uri, CTXVEC_REPO=str(REPO),
                    PREFECT_WORKER_QUERY_SECONDS="1")
    worker = [str(BIN / "prefect"), "worker", "start", "--pool", "ctxvec-cpu", "--type",
              "process", "--limit", "1"]
    with background(worker, tmp_path / "worker.log", env, cwd=tmp_path) as proc:
        run = run_deployment("ctxvec-pipeline/smoke", timeout=300,
                             parameters={"home": str(home), "overrides": overrides})
        assert proc.poll() is None, tail(tmp_path / "worker.log")
        assert run.state.is_completed(), f"{run.state}\n{tail(tmp_path / 'worker.log')}"
    tasks = task_runs(run.id)
    # the served run's results, found in the workspace by another process on another machine's
    # worth of setup: nothing after ingest runs again, and no second version is registered
    assert tasks["ingest"].state.name == "Completed"
    assert {n: tasks[n].state.name for n in ("train", "register", "embed", "index")} == \
        dict.fromkeys(("train", "register", "embed", "index"), "Cached")
    from mlflow import MlflowClient

    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = registry.search_model_versions("name='ctxvec-encoder'")
    assert [str(v.version) for v in versions] == ["1"]


def test_schedule_with_a_work_pool_registers_and_exits(served, servers, tmp_path):
    from ctxvec_flows.deployments import ScheduleSpec, apply

    from ctxvec.errors import UserInputError

    api, _ = servers
    proc = subprocess.run(
        [sys.executable, "-m", "ctxvec.cli", "schedule", "--recipe", str(TINY), "--cron",
         "0 4 * * 1", "--name", "pooled", "--work-pool", "ctxvec-cpu", "--json"],
        cwd=REPO, env=clean_env(PREFECT_API_URL=api, CTXVEC_HOME=str(tmp_path)),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (printed,) = json.loads(proc.stdout)["deployments"]
    dep = deployment("ctxvec-pipeline/pooled")
    assert str(dep.id) == printed["id"] and dep.work_pool_name == "ctxvec-cpu"
    assert dep.entrypoint == "ctxvec_flows.pipeline.pipeline"
    assert deployment_schedules(dep)[0].schedule.cron == "0 4 * * 1"
    spec = ScheduleSpec(name="lost", flow="pipeline", recipe=str(TINY), cron="0 4 * * *",
                        work_pool="no-such-pool")
    with pytest.raises(UserInputError, match="work pool 'no-such-pool' not found"):
        apply([spec])
    assert deployment("ctxvec-pipeline/lost") is None


def test_schedule_without_a_server_runs_a_local_one_while_it_serves(tmp_path):
    """No PREFECT_API_URL: the ephemeral server has no scheduler, so `ctxvec schedule` starts a
    Prefect server on the workspace's Prefect database, and stops it when it stops."""
    import urllib.request

    args = [sys.executable, "-m", "ctxvec.cli", "schedule", "--recipe", str(TINY),
            "--cron", "0 2 * * *", "--json"]
    env = clean_env(CTXVEC_HOME=str(tmp_path / "home"))
    with background(args, tmp_path / "stderr.log", env, cwd=REPO, stdout=tmp_path / "stdout",
                    grace=30) as proc:  # time to stop its runner, then its server
        out = wait_for("the printed deployments", lambda: (tmp_path / "stdout").read_text(),
                       120, proc, tmp_path / "stderr.log")
        printed = json.loads(out.splitlines()[0])
        api = printed["prefect_api_url"]
        assert printed["local_server"] and api.startswith("http://127.0.0.1:")
        assert printed["prefect_home"] == str(tmp_path / "home" / "prefect")
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            dep = wait_for("the deployment", lambda: deployment("ctxvec-pipeline/tiny"), 60,
                           proc, tmp_path / "stderr.log")
            assert deployment_schedules(dep)[0].schedule.cron == "0 2 * * *"
    assert (tmp_path / "home" / "prefect" / "prefect.db").is_file()
    # the local server goes with it (its shutdown may take a while on a loaded machine)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{api}/health", timeout=2)
        except OSError:
            break
        assert time.monotonic() < deadline, f"the local server at {api} outlived ctxvec schedule"
        time.sleep(1)


def schedule_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = clean_env(CTXVEC_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "ctxvec.cli", "schedule", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def test_schedule_dry_run_prints_the_deployments(tmp_path):
    proc = schedule_cli("--recipe", "configs/tiny.yaml", "--cron", "0 2 * * *",
                        "--set", "train.steps=3", "--timezone", "Europe/Paris",
                        "--continual-recipe", "configs/tiny.yaml",
                        "--continual-interval", "600", "--dry-run", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["mode"] == "dry-run"
    pipeline, continual = out["deployments"]
    assert pipeline["name"] == "ctxvec-pipeline/tiny"
    assert pipeline["entrypoint"] == "ctxvec_flows.pipeline.pipeline"
    assert pipeline["schedule"] == {"cron": "0 2 * * *", "interval_seconds": None,
                                    "timezone": "Europe/Paris"}
    assert pipeline["parameters"] == {"config": str(TINY), "overrides": ["train.steps=3"],
                                      "home": str(tmp_path)}
    assert continual["name"] == "ctxvec-continual/tiny"
    assert continual["schedule"]["interval_seconds"] == 600
    assert not (tmp_path / "prefect").exists()  # a dry run registers and creates nothing


@pytest.mark.parametrize("args, message", [
    (["--recipe", "configs/tiny.yaml", "--cron", "0 2 * *"], "invalid cron string '0 2 * *'"),
    (["--recipe", "configs/nope.yaml", "--cron", "0 2 * * *"], "recipe not found"),
    (["--continual-interval", "60"], "nothing to schedule"),
    # a dry run must not promise what the real command refuses (no PREFECT_API_URL here)
    (["--recipe", "configs/tiny.yaml", "--cron", "0 2 * * *", "--work-pool", "ctxvec-cpu"],
     "--work-pool needs a Prefect server"),
])
def test_schedule_rejects_bad_input_with_exit_code_2(tmp_path, args, message):
    proc = schedule_cli(*args, "--dry-run", home=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("kwargs, message", [
    ({"cron": "61 2 * * *"}, "invalid cron string"),
    ({}, "give a cron string or an interval"),
    ({"cron": "0 2 * * *", "interval": 60}, "exactly one"),
    ({"interval": 0}, "positive number of seconds"),
    ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "unknown timezone"),
    ({"cron": "0 2 * * *", "overrides": ("train.stepz=3",)}, "train.stepz"),
    ({"cron": "0 2 * * *", "name": "a/b"}, "deployment name"),
    ({"cron": "0 2 * * *", "flow": "nightly"}, "flow must be one of"),
])
def test_schedule_spec_validates_on_construction(kwargs, message):
    from ctxvec_flows.deployments import ScheduleSpec

    from ctxvec.errors import UserInputError

    with pytest.raises(UserInputError, match=re.escape(message)):
        ScheduleSpec(**{"name": "n", "flow": "pipeline", "recipe": str(TINY), **kwargs})


def test_schedule_spec_builds_the_prefect_deployment():
    from ctxvec_flows.deployments import ScheduleSpec

    spec = ScheduleSpec(name="n", flow="continual", recipe=str(TINY), interval=900,
                        timezone="Europe/Paris", tags=("x",), overrides=("train.steps=2",))
    dep = spec.to_deployment()
    assert dep.name == "n" and dep.entrypoint == "ctxvec_flows.continual.continual"
    assert dep.parameters == {"config": str(TINY), "overrides": ["train.steps=2"], "home": None}
    assert dep.tags == ["ctxvec", "x"]
    (schedule,) = dep.schedules
    assert schedule.schedule.interval == dt.timedelta(minutes=15)
    assert schedule.schedule.timezone == "Europe/Paris"
