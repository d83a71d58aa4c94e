"""The continual update end to end (real Prefect flow, MLflow on SQLite, FAISS), through the CLI
as a user runs it: the gate rejects a harmful update and leaves everything serving as it was; an
update killed after training, after embedding and during the index switch always leaves a
champion whose index matches it, and a re-run completes the update without training twice.

Each ``ctxvec run``/``update`` of the tiny recipe brings 150 new documents: ingest stops at
``ingest.max_docs`` and the next ingest picks up where it stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ctxvec.refs import ModelRef
from ctxvec.registry import Registry
from ctxvec.workspace import Workspace, read_json
from tests.conftest import STS_DEV, needs_shared_data
from tests.flows.runs import flow_artifacts, flow_logs, latest_flow_run, task_runs
from tests.helpers import REPO, TINY, cli_env, run_cli

# no replay, no regulariser, a learning rate 50x the recipe's: it forgets. The tiny recipe trains
# MLM, and these tests are about what MLM forgets: its new-domain metric is the MLM loss, which
# such an update does improve (auto would take the label-free pseudo-query measure)
MLM_GATE = ["--set", "continual.gate.new_metric=new.mlm_loss"]
HARMFUL = ["--set", "train.lr=0.05", "--set", "train.steps=30",
           "--set", "continual.replay_ratio=0", "--set", "continual.regularizer=none", *MLM_GATE]


def sts_where_present() -> list[str]:
    """The STS evaluation where its file is here; none otherwise (the gate would refuse to
    promote without it, and these tests are not about that)."""
    return ["--set", f"evaluate.sts={STS_DEV}" if STS_DEV.is_file() else "evaluate.sts=null"]


def killed_run(home: Path, tmp: Path, prefect_api: str, point: str,
               *args: str) -> tuple[int, str]:
    """Run the CLI until crash point ``point`` kills it (SIGKILL, as a power cut would). Its
    flow reports to the session's Prefect server ``prefect_api``. Output goes to files and the
    process gets its own session: a child process the kill orphans would otherwise hold the
    pipes open; it is killed with its group after."""
    env = cli_env(home, prefect_api, CTXVEC_CRASH_AT=point)
    err = tmp / f"{point}.err"
    with open(tmp / f"{point}.out", "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "ctxvec.cli", *args], cwd=REPO, env=env,
                                stdout=o, stderr=e, start_new_session=True)
        try:
            rc = proc.wait(timeout=600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return rc, err.read_text()


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def served_pair(ws: Workspace) -> tuple[str, str]:
    """(champion version, the model version its linked index was built from)."""
    registry = Registry(ws)
    champion = registry.alias_version("ctxvec-encoder", "champion")
    index_uri = registry.resolve(ModelRef.registered("ctxvec-encoder", version=champion)).index_uri
    return champion, str(read_json(Path(index_uri) / "manifest.json")["model_version"])


@pytest.fixture(scope="module")
def home(tmp_path_factory, prefect_api):
    home = tmp_path_factory.mktemp("continual") / "home"
    _ok(run_cli(home, "run", "--config", str(TINY), "--json", prefect_api=prefect_api))
    return home


@needs_shared_data(STS_DEV)
def test_harmful_update_is_rejected(home, prefect_api):
    ws = Workspace(home)
    registry = Registry(ws)
    before = served_pair(ws)
    index_before = registry.resolve(f"models:/ctxvec-encoder/{before[0]}").index_uri
    out = _ok(run_cli(home, "update", "--config", str(TINY), "--json", *HARMFUL,
                      "--set", f"evaluate.sts={STS_DEV}", prefect_api=prefect_api))
    assert out["status"] == "rejected"
    assert served_pair(ws) == before  # champion and its index untouched
    assert registry.resolve(f"models:/ctxvec-encoder/{before[0]}").index_uri == index_before
    challenger = registry.resolve("models:/ctxvec-encoder@challenger")
    assert challenger.version == out["version"] != before[0]
    assert challenger.tags["gate.decision"] == "rejected"
    assert "index_uri" not in challenger.tags  # never embedded or indexed
    failed = [c for c in json.loads(challenger.tags["gate.checks"]) if not c["passed"]]
    assert failed and all(c["kind"] == "old-domain" for c in failed)
    for c in failed:  # the metrics that explain why are the version's own tags
        assert c["metric"] in challenger.tags["gate.reason"]
        assert float(challenger.tags[f"eval.{c['metric']}"]) == pytest.approx(
            c["challenger"], rel=1e-4)
        assert float(challenger.tags[f"gate.champion.{c['metric']}"]) == pytest.approx(
            c["champion"], rel=1e-4)


def test_harmful_update_without_its_sts_data_is_not_promoted(home, tmp_path, prefect_client):
    """The recipe asks for STS (evaluate.sts) but the file is not there: the gate cannot compare
    what it was asked to compare, so it does not promote, and the version's tags say why; so do
    the gate task's log and the flow run's artifacts in Prefect."""
    ws = Workspace(home)
    registry = Registry(ws)
    before = served_pair(ws)
    missing = tmp_path / "shared" / "stsbenchmark" / "sts-dev.csv"
    proc = run_cli(home, "update", "--config", str(TINY), "--json", *HARMFUL,
                   "--set", f"evaluate.sts={missing}", prefect_api=prefect_client)
    out = _ok(proc)
    assert out["status"] == "rejected"
    assert served_pair(ws) == before  # champion and its index untouched
    challenger = registry.resolve("models:/ctxvec-encoder@challenger")
    assert challenger.version == out["version"] != before[0]
    assert challenger.tags["gate.decision"] == "rejected"
    assert "index_uri" not in challenger.tags  # never embedded or indexed
    unmeasured = [c for c in json.loads(challenger.tags["gate.checks"])
                  if c["kind"] == "unmeasured"]
    assert [(c["metric"], c["passed"]) for c in unmeasured] == [("sts", False)]
    assert str(missing) in unmeasured[0]["why"]
    assert f"sts could not be measured (data not found: {missing})" in \
        challenger.tags["gate.reason"]
    # in Prefect (flows/observe.py): ctxvec's line in the gate task's log (and once on stderr),
    # the decision with every check as an artifact
    line = f"update: gate rejects version {out['version']}: "
    assert proc.stderr.count(line) == 1, proc.stderr[-3000:]
    run = latest_flow_run("ctxvec-continual", home)
    gate_task = task_runs(run.id, expect=("gate",))["gate"]
    assert [x.task_run_id for x in flow_logs(run.id) if x.message.startswith(line)] == \
        [gate_task.id]
    artifacts = flow_artifacts(run.id)
    assert set(artifacts) == {"ctxvec-encoder-continual", "ctxvec-encoder-gate",
                              "ctxvec-encoder-mlflow"}
    gate = artifacts["ctxvec-encoder-gate"].data
    assert f"## Gate: version {out['version']} rejected against champion version {before[0]}" \
        in gate
    assert "| sts | unmeasured | - | - | not measured | **FAIL** |" in gate
    assert f"- sts: data not found: {missing}\n" in gate
    assert "| status | rejected |" in artifacts["ctxvec-encoder-continual"].data


@pytest.mark.parametrize("points", [
    # the default tier kills the update where a wrong order would serve a mismatched pair
    pytest.param(("during-switch",), id="during-switch"),
    pytest.param(("after-train", "after-embed", "during-switch"), id="every-stage",
                 marks=pytest.mark.slow),
])
def test_a_killed_update_keeps_a_matching_pair_and_completes(home, tmp_path, prefect_api,
                                                             points):
    ws = Workspace(home)
    registry = Registry(ws)
    champion_before = served_pair(ws)[0]
    # EWC and distillation here, so that every regulariser path runs end to end; the gate's
    # tolerance is wide open because this test is about crash safety, not the gate.
    args = ["update", "--config", str(TINY), "--json", "--set", "continual.regularizer=ewc",
            "--set", "continual.reg_weight=0.1", "--set", "continual.distill_weight=0.5",
            "--set", "continual.gate.tolerance=10", *MLM_GATE, *sts_where_present()]
    killed_at = []
    for point in points:
        rc, stderr = killed_run(home, tmp_path, prefect_api, point, *args)
        assert rc == -signal.SIGKILL, stderr[-3000:]
        assert f"crash point {point}" in stderr
        killed_at.append(point)
        champion, index_version = served_pair(ws)
        assert champion == index_version == champion_before, killed_at
    out = _ok(run_cli(home, *args, prefect_api=prefect_api))
    assert out["status"] == "promoted"
    new = out["version"]
    assert served_pair(ws) == (new, new)
    assert out["previous_champion"] == champion_before
    # one training run, one registered version for this update, whatever the crashes
    runs = [p for p in ws.runs.iterdir() if p.name.startswith("continual-")
            and p.name.endswith(out["plan"]["key"])]
    assert len(runs) == 1
    assert (runs[0] / "manifest.json").is_file()
    assert sum(v.tags.get("continual.key") == out["plan"]["key"]
               for v in registry.list_versions("ctxvec-encoder")) == 1
    info = registry.resolve(f"models:/ctxvec-encoder/{new}")
    assert info.tags["parent_version"] == champion_before
    assert info.tags["continual.regularizer"] == "ewc"
    assert info.tags["data_snapshot"] > registry.resolve(
        f"models:/ctxvec-encoder/{champion_before}").tags["data_snapshot"]
    assert json.loads(info.tags["drift"])["against"] == champion_before
    # and rollback restores the previous champion with its own index
    _ok(run_cli(home, "models", "rollback", "--json"))
    assert served_pair(ws) == (champion_before, champion_before)
