"""MLflow on PostgreSQL, as it runs beyond one machine (docs/architecture.md): a throwaway cluster
of the system's PostgreSQL (tests/servers.py; Debian's ``postgresql`` package, which .ci/run
installs), an ``mlflow server --backend-store-uri postgresql://...`` on it with a local artifact
root, and one ``ctxvec run`` of the tiny recipe pointed at it through ``MLFLOW_TRACKING_URI``.

What the run registered is read back three ways: through MLflow's client, straight from
MLflow's tables in Postgres (so it is there, not in a SQLite file that happened to answer), and
through ``ctxvec models list --json`` as a user asks for it.

They are slow-tier tests (a cluster, a server and a pipeline run: ~45 s on two cores), which
.ci/run runs too. Without PostgreSQL installed they skip, with how to install it as the
reason; where the environment variable ``CI`` is set they fail instead (CI installs it).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.flows.runs import small_run_overrides, write_corpus
from tests.helpers import REPO, TINY
from tests.servers import (
    PostgresMissing,
    clean_env,
    mlflow_spec,
    postgres_server,
    require_postgres,
    running,
)

MODEL = "ctxvec-encoder"


SLOW = pytest.mark.slow  # the cluster, the server and the run: ~45 s on two cores


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(Postgres URL, MLflow tracking URI, the server's artifact root): MLflow keeps its
    metadata in that database and serves artifacts from that local folder."""
    require_postgres()
    root = tmp_path_factory.mktemp("mlflow-postgres")
    with postgres_server(db="mlflow") as db:
        with running(mlflow_spec(root / "mlflow", backend=db)) as (uri,):
            yield db, uri, root / "mlflow" / "artifacts"


def ctxvec(uri: str, home, *args: str, prefect_api: str | None = None) -> dict:
    """``ctxvec ARGS --json`` in a fresh process tracking to ``uri`` (and reporting flows to
    ``prefect_api``) -> its JSON."""
    env = clean_env(MLFLOW_TRACKING_URI=uri, CTXVEC_HOME=str(home),
                    **({"PREFECT_API_URL": prefect_api} if prefect_api else {}))
    proc = subprocess.run([sys.executable, "-m", "ctxvec.cli", *args, "--json"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ctxvec {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def run(servers, tmp_path_factory, prefect_api):
    """One pipeline run of the tiny recipe on a small corpus -> (workspace, its summary)."""
    _, uri, _ = servers
    root = tmp_path_factory.mktemp("pg-run")
    overrides = small_run_overrides(write_corpus(root / "corpus", docs=120))
    home = root / "home"
    summary = ctxvec(uri, home, "run", "--config", str(TINY),
                     *[x for o in overrides for x in ("--set", o)], prefect_api=prefect_api)
    return home, summary


def query(db: str, sql: str, *params) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(db) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    conn.close()
    return rows


@SLOW
def test_the_client_finds_version_1_its_tags_and_champion(servers, run):
    from mlflow import MlflowClient

    _, uri, artifacts = servers
    home, s = run
    # registry_uri too: mlflow's registry URI is process-wide, and other tests set it
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version_by_alias(MODEL, "champion")
    assert str(mv.version) == "1" == s["model"]["version"] == s["champion"]
    assert mv.tags["data_snapshot"] == s["snapshot"]["snapshot_id"]
    assert mv.tags["tokenizer_hash"] == s["tokenizer"]["sha256"]
    assert mv.tags["index_uri"] == s["index"]["path"] and mv.tags["dim"] == "32"
    assert client.get_run(mv.run_id).data.params["train.steps"] == "12"
    # tracked to the server, not to the embedded default in the workspace
    assert not (home / "mlflow.db").exists()
    # the weights went through the server to its local artifact root, as safetensors
    assert list(artifacts.rglob("model.safetensors"))


@SLOW
def test_the_registry_is_stored_in_postgres(servers, run):
    db, uri, _ = servers
    _, s = run
    assert query(db, "SELECT name FROM registered_models") == [(MODEL,)]
    (version,) = query(db, "SELECT version, run_id, status FROM model_versions WHERE name = %s",
                       MODEL)
    assert version == (1, s["model"]["run_id"], "READY")
    tags = dict(query(db, "SELECT key, value FROM model_version_tags "
                          "WHERE name = %s AND version = 1", MODEL))
    assert tags["index_uri"] == s["index"]["path"]
    assert tags["data_snapshot"] == s["snapshot"]["snapshot_id"]
    assert tags["tokenizer_hash"] == s["tokenizer"]["sha256"]
    aliases = dict(query(db, "SELECT alias, version FROM registered_model_aliases "
                             "WHERE name = %s", MODEL))
    assert aliases == {"challenger": 1, "champion": 1}  # registered, then promoted
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert aliases == {k: int(v) for k, v in client.get_registered_model(MODEL).aliases.items()}
    # the run behind it, with its parameters and metric history
    assert query(db, "SELECT value FROM params WHERE run_uuid = %s AND key = 'train.steps'",
                 s["model"]["run_id"]) == [("12",)]
    (losses,) = query(db, "SELECT count(*) FROM metrics WHERE run_uuid = %s "
                          "AND key = 'train/loss'", s["model"]["run_id"])
    assert losses == (3,)  # tiny.yaml: 12 steps, logged every 4


@SLOW
def test_models_list_reads_the_postgres_registry(servers, run):
    _, uri, _ = servers
    home, s = run
    out = ctxvec(uri, home, "models", "list")
    assert out["name"] == MODEL
    (v1,) = out["versions"]
    assert v1["version"] == "1" and v1["aliases"] == ["challenger", "champion"]
    assert v1["data_snapshot"] == s["snapshot"]["snapshot_id"]
    assert v1["index_uri"] == s["index"]["path"]


def test_without_postgres_these_tests_skip_saying_how_to_install_it_but_fail_in_ci(
        tmp_path, monkeypatch):
    """A fresh machine with only Python skips them, with the command that fixes it as the
    reason; CI (the variable CI set) installs PostgreSQL, so there it is a failure."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no initdb, no pg_config
    monkeypatch.setattr("tests.servers.PG_LIB", tmp_path / "none")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install -y postgresql"):
        require_postgres()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(PostgresMissing, match=r"apt-get install -y postgresql"):
        require_postgres()
