"""A command that only reads a workspace, run where there is none, creates nothing and says where
it looked and how to point at the right one (``CTXVEC_HOME``); it used to create an empty
``.ctxvec/mlflow.db`` in the current folder and then fail with a registry error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PREFECT_", "CTXVEC_HOME"))}
    return env | extra


def test_models_list_in_a_folder_without_a_workspace_creates_nothing(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "ctxvec.cli", "models", "list"], cwd=elsewhere,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert not (elsewhere / ".ctxvec").exists()
    assert str(elsewhere / ".ctxvec") in proc.stderr and "CTXVEC_HOME=" in proc.stderr


def test_a_named_workspace_that_does_not_exist_is_not_created(tmp_path, monkeypatch):
    from ctxvec.errors import UserInputError
    from ctxvec.registry import Registry
    from ctxvec.workspace import Workspace

    missing = tmp_path / "typo" / "ws"
    monkeypatch.setenv("CTXVEC_HOME", str(missing))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserInputError, match="CTXVEC_HOME") as e:
        Registry(Workspace.from_env())
    assert str(missing) in str(e.value)
    assert not missing.exists() and not missing.parent.exists()


def test_a_workspace_in_a_parent_folder_is_suggested(tmp_path, monkeypatch):
    from ctxvec.workspace import Workspace, WorkspaceNotFoundError

    (tmp_path / ".ctxvec").mkdir()
    (tmp_path / ".ctxvec" / "mlflow.db").write_bytes(b"")
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    monkeypatch.chdir(below)
    monkeypatch.delenv("CTXVEC_HOME", raising=False)
    with pytest.raises(WorkspaceNotFoundError) as e:
        Workspace.from_env().require()
    assert f"CTXVEC_HOME={tmp_path / '.ctxvec'}" in str(e.value)
    assert not (below / ".ctxvec").exists()
