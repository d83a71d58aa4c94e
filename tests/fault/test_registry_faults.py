"""Faults in the MLflow registry: kills during MLflow's first set-up, databases that older kills
left half-migrated (with and without registered versions), a killed ``register``, a copied
workspace, and alias moves the user asks for that must be refused.

Real MLflow on SQLite and real processes, killed with SIGKILL at named crash points
(``CTXVEC_CRASH_AT``, ctxvec.faults) or once a file they write has appeared: nothing here waits
a fixed time for a process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, cli_env

NAME = "ctxvec-encoder"


def _cli(home: Path, *args: str, crash: str | None = None) -> subprocess.Popen:
    env = cli_env(home, **({"CTXVEC_CRASH_AT": crash} if crash else {}))
    return subprocess.Popen([sys.executable, "-m", "ctxvec.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _script(*args: str, crash: str | None = None, home: Path | None = None
            ) -> subprocess.CompletedProcess:
    env = cli_env(home or Path("/nonexistent"), **({"CTXVEC_CRASH_AT": crash} if crash else {}))
    return subprocess.run([sys.executable, "-m", "tests.fault.registry_scripts", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _revision(db: Path) -> str | None:
    with sqlite3.connect(db) as con:
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:  # no alembic_version table yet
            return None
    return row[0] if row else None


def _head() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _models_list_works(home: Path) -> None:
    """``ctxvec models list`` opens the registry: exit 2 "no registered model" on an empty one
    (a user error, not a broken store), and the database is complete afterwards."""
    code, _, err = _finish(_cli(home, "models", "list"))
    assert code == 2 and "no registered model 'ctxvec-encoder'" in err, err[-3000:]
    assert _revision(home / "mlflow.db") == _head()


# --- workspaces with a registry, quickly ----------------------------------------------------


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """A complete, empty ``mlflow.db``, built once and copied into the workspaces below (a
    build takes seconds)."""
    from ctxvec.registry.sqlite_store import ensure_store

    return ensure_store(tmp_path_factory.mktemp("empty-db"))


def _workspace(root: Path, empty_db: Path):
    from ctxvec.workspace import Workspace

    ws = Workspace(root).ensure()
    shutil.copy(empty_db, ws.root / "mlflow.db")
    return ws


# --- 1. MLflow's first set-up ----------------------------------------------------------------


def _kill_setup_attempts(home: Path, points: tuple[str, ...]) -> None:
    for point in points:
        code, _, err = _finish(_cli(home, "models", "list", crash=point))
        assert code == -signal.SIGKILL, (point, err[-2000:])
        assert not (home / "mlflow.db").exists(), point  # never a half-built database


def test_a_kill_during_the_first_setup_never_bricks_the_workspace(tmp_path):
    """An attempt killed from outside once the file it builds the schema in has appeared leaves
    no ``mlflow.db`` (nothing or a complete one); the next command works."""
    home = tmp_path / "home"
    home.mkdir()
    proc = _cli(home, "models", "list")
    deadline = time.monotonic() + 300
    while not list(home.glob("mlflow.db.new-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the set-up never started"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    assert _finish(proc)[0] == -signal.SIGKILL
    assert not (home / "mlflow.db").exists()
    _models_list_works(home)
    assert not list(home.glob("mlflow.db.new-*"))  # what the kills left is cleaned up


@pytest.mark.slow
def test_kills_at_more_moments_of_the_first_setup(tmp_path):
    """Killed before the 1st, the 400th and the 1,200th of the schema's ~1,700 SQL statements,
    and after the build just before the rename: the same."""
    home = tmp_path / "home"
    home.mkdir()
    _kill_setup_attempts(home, ("mlflow-setup-sql-1", "mlflow-setup-sql-400",
                                "mlflow-setup-sql-1200", "mlflow-setup-before-rename"))
    _models_list_works(home)


def _mlflow_fails_on(db: Path, tmp: Path) -> None:
    """MLflow alone cannot open ``db`` (tried on a copy): what every command hit before."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    copy = tmp / "copy-of-mlflow.db"
    shutil.copy(db, copy)
    with pytest.raises(Exception, match="already exists"):
        SqlAlchemyStore(f"sqlite:///{copy}", str(tmp / "artifacts"))


@pytest.mark.slow
def test_a_database_an_older_kill_left_half_built_is_rebuilt(tmp_path):
    """A file MLflow's own first set-up left when it was killed (as ctxvec ran it before its
    set-up was atomic; before the 900th statement is a moment that bricks it): rebuilt, the
    old file kept beside it."""
    home = tmp_path / "home"
    home.mkdir()
    db = home / "mlflow.db"
    proc = _script("legacy", str(db), "900")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _mlflow_fails_on(db, tmp_path)
    _models_list_works(home)
    assert len(list(home.glob("mlflow.db.before-repair-*"))) == 1


def test_a_half_migrated_database_keeps_its_registered_versions(tmp_path):
    """An older schema (8 revisions back) holding a registered model, whose upgrade by MLflow
    was killed before its 40th statement (a moment that bricks it): rebuilt with both
    versions, their tags and the alias."""
    home = tmp_path / "home"
    home.mkdir()
    db = home / "mlflow.db"
    proc = _script("legacy", str(db), "40", "8")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _mlflow_fails_on(db, tmp_path)
    code, out, err = _finish(_cli(home, "models", "list", "--json"))
    assert code == 0, err[-3000:]
    versions = {v["version"]: v for v in json.loads(out)["versions"]}
    assert sorted(versions) == ["1", "2"]
    assert versions["2"]["aliases"] == ["champion"]
    assert versions["1"]["data_snapshot"] == "snap-1"
    assert _revision(db) == _head()
    assert len(list(home.glob("mlflow.db.before-repair-*"))) == 1


@pytest.mark.slow
def test_a_repair_that_is_killed_is_done_again_by_the_next_command(tmp_path):
    """The rebuild of a half-migrated database with registered versions, killed in its schema
    build and then just before the new file replaces the old: the old file is untouched each
    time, and the next command rebuilds it with its versions."""
    home = tmp_path / "home"
    home.mkdir()
    db = home / "mlflow.db"
    assert _script("legacy", str(db), "40", "8").returncode == -signal.SIGKILL
    for point in ("mlflow-setup-sql-300", "mlflow-repair-before-swap"):
        before = db.read_bytes()
        code, _, err = _finish(_cli(home, "models", "list", crash=point))
        assert code == -signal.SIGKILL, (point, err[-2000:])
        assert db.read_bytes() == before, point
    code, out, err = _finish(_cli(home, "models", "list", "--json"))
    assert code == 0, err[-3000:]
    assert [v["version"] for v in json.loads(out)["versions"]] == ["2", "1"]


@pytest.mark.slow
def test_two_commands_setting_up_at_once_both_work(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    procs = [_cli(home, "models", "list") for _ in range(2)]
    for proc in procs:
        code, _, err = _finish(proc)
        assert code == 2 and "no registered model" in err, err[-3000:]
    assert _revision(home / "mlflow.db") == _head()


@pytest.mark.parametrize("kind", ["newer-mlflow", "not-sqlite"])
def test_a_database_it_cannot_repair_is_left_alone_with_a_clear_error(tmp_path, kind):
    """A file a newer MLflow wrote (a schema revision this one does not know), or that is not
    an SQLite database at all: a clear error, and the file exactly as it was."""
    from ctxvec.registry.sqlite_store import StoreSetupError, ensure_store

    db = tmp_path / "mlflow.db"
    if kind == "newer-mlflow":
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            con.execute("INSERT INTO alembic_version VALUES ('ffffffffffff')")
    else:
        db.write_bytes(b"not a database, " * 100)
    before = db.read_bytes()
    match = "newer MLflow" if kind == "newer-mlflow" else "not a readable SQLite database"
    with pytest.raises(StoreSetupError, match=match):
        ensure_store(tmp_path)
    assert db.read_bytes() == before
    assert not list(tmp_path.glob("mlflow.db.*-*"))


# --- 10. a copied workspace ------------------------------------------------------------------


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_a_copied_workspace_writes_and_reads_its_own_artifacts(tmp_path, empty_db, monkeypatch):
    """``cp -r`` of a workspace: new artifacts land in the copy's ``mlartifacts``, the
    original's stay as they were, and the copy's versions (artifacts, ``index_uri``) are its
    own, so it works with the original deleted."""
    from ctxvec.registry import Registry
    from ctxvec.registry.register import experiment_id
    from ctxvec.workspace import Workspace

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    a = _workspace(tmp_path / "a", empty_db)
    reg_a = Registry(a)
    run = reg_a.client.create_run(experiment_id(reg_a, "ctxvec"))
    reg_a.client.log_text(run.info.run_id, "weights", "model/weights.txt")
    reg_a.client.create_registered_model(NAME)
    reg_a.client.create_model_version(NAME, f"{run.info.artifact_uri}/model", run.info.run_id)
    (a.indexes / "index-1").mkdir(parents=True)
    (a.indexes / "index-1" / "manifest.json").write_text("{}")
    reg_a.client.set_model_version_tag(NAME, "1", "index_uri", str(a.indexes / "index-1"))
    before = _files(a.mlflow_artifacts)

    shutil.copytree(a.root, tmp_path / "b")
    b = Workspace(tmp_path / "b")
    reg_b = Registry(b)
    run_b = reg_b.client.create_run(experiment_id(reg_b, "ctxvec"))
    reg_b.client.log_text(run_b.info.run_id, "new", "model/new.txt")
    assert _files(a.mlflow_artifacts) == before
    assert any(p.endswith("model/new.txt") for p in _files(b.mlflow_artifacts))

    shutil.rmtree(a.root)
    v1 = reg_b.resolve(f"models:/{NAME}/1")
    assert v1.index_uri == str(b.indexes / "index-1")
    assert reg_b.client.get_model_version(NAME, "1").source.startswith(
        b.mlflow_artifacts.as_uri())
    got = reg_b.client.download_artifacts(run.info.run_id, "model/weights.txt", str(tmp_path))
    assert Path(got).read_text() == "weights"
    reg_b.promote(NAME, "1")  # its index is found in the copy

    # Moved (mv) rather than copied: the same, with the folder it came from gone.
    shutil.move(b.root, tmp_path / "c")
    c = Workspace(tmp_path / "c")
    assert Registry(c).resolve(f"models:/{NAME}/1").index_uri == str(c.indexes / "index-1")


# --- 8 and 10: promote and aliases -----------------------------------------------------------


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory, empty_db):
    """Versions 1-3 of NAME: 1 with its index (champion), 2 whose index folder was deleted,
    3 with no index."""
    from ctxvec.registry import Registry

    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            mp.delenv(key)
        ws = _workspace(tmp_path_factory.mktemp("promote"), empty_db)
        reg = Registry(ws)
        reg.client.create_registered_model(NAME)
        for v in ("1", "2", "3"):
            reg.client.create_model_version(NAME, f"file:///nowhere/{v}")
        for v in ("1", "2"):
            index = ws.indexes / f"index-{v}"
            index.mkdir(parents=True)
            (index / "manifest.json").write_text("{}")
            reg.client.set_model_version_tag(NAME, v, "index_uri", str(index))
        shutil.rmtree(ws.indexes / "index-2")
        reg.promote(NAME, "1")
        yield reg


@pytest.fixture
def promote_cli(three_versions, monkeypatch):
    """``ctxvec ...`` in this process (CliRunner) on ``three_versions``' workspace."""
    from typer.testing import CliRunner

    from ctxvec.cli import app

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CTXVEC_HOME", str(three_versions.ws.root))
    return lambda *args: CliRunner().invoke(app, list(args))


def test_promote_refuses_a_version_whose_index_is_gone(three_versions, promote_cli):
    result = promote_cli("models", "promote", "2")
    assert result.exit_code == 2, result.output
    assert "cannot promote version 2: its index" in result.output and "is gone" in result.output
    result = promote_cli("models", "promote", "3")
    assert result.exit_code == 2 and "it has no index yet" in result.output
    assert three_versions.alias_version(NAME, "champion") == "1"


@pytest.mark.parametrize("alias", ["bad alias!", "v2", "latest"])
def test_an_invalid_alias_is_a_user_error(three_versions, promote_cli, alias):
    result = promote_cli("models", "promote", "1", "--alias", alias)
    assert result.exit_code == 2, result.output
    assert "alias" in result.output.lower()
    aliases = three_versions.client.get_registered_model(NAME).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1"}


# --- 10. a killed register -------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_register_is_finished_or_failed_by_the_next(tmp_path):
    """A register killed before its model is logged leaves a RUNNING run: the next marks it
    FAILED. One killed after its version exists: the next finishes that version (tags,
    challenger alias, run FINISHED) instead of registering the model twice."""
    from mlflow import MlflowClient

    home, model = tmp_path / "home", tmp_path / "run" / "model"
    for point in ("register-before-log-model", "register-after-log-model"):
        proc = _script("register", str(home), str(model), crash=point, home=home)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-3000:])
    proc = _script("register", str(home), str(model), home=home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["version"] == "1"

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    versions = client.search_model_versions(f"name='{NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].tags["eval.mlm_perplexity"] == "9.5"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "1"
    runs = client.search_runs([client.get_run(record["run_id"]).info.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert client.get_run(record["run_id"]).info.status == "FINISHED"

    # The workspace copied (cp -r): a register there writes into the copy's mlartifacts only.
    before = _files(home / "mlartifacts")
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    proc = _script("register", str(copy), str(tmp_path / "run2" / "model"), home=copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["version"] == "2"
    assert _files(home / "mlartifacts") == before
    assert len(_files(copy / "mlartifacts")) > len(before)


def test_registering_the_same_trained_model_again_reuses_its_version(tmp_path):
    """A register that finished but whose caller died before recording it (a `ctxvec run`
    killed between register and its cached record) is not repeated: the same trained model
    (same folder, same steps) registered again with ``reuse`` (as the pipeline's register stage
    does) is the version it already has (without it: a new version, as tests/integration/
    test_models_cli.py relies on)."""
    from mlflow import MlflowClient

    home, model = tmp_path / "home", tmp_path / "run" / "model"
    first = _script("register", str(home), str(model), home=home)
    assert first.returncode == 0, first.stderr[-3000:]
    again = _script("register", str(home), str(model), "reuse", home=home)
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (first, again))
    assert a["version"] == b["version"] == "1" and a["run_id"] == b["run_id"]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert [str(v.version) for v in client.search_model_versions(f"name='{NAME}'")] == ["1"]
