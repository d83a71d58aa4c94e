"""How ``ctxvec query`` finds a running ``ctxvec serve`` of its workspace: the record file the
server holds, which records count (a live process on this machine), and which server answers
for which reference. The query sent to a real server is tested in
tests/integration/test_query_server.py."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from ctxvec.refs import ModelRef
from ctxvec.serve.client import _serves
from ctxvec.serve.discovery import (
    SERVERS_DIR,
    ServerRecord,
    announce,
    client_url,
    live_servers,
    local_home,
)


def record(**changes) -> ServerRecord:
    base = ServerRecord(url="http://127.0.0.1:8000", pid=os.getpid(), host=socket.gethostname(),
                        ref="models:/ctxvec-encoder@champion", config=None,
                        answers_as_recipe=True, api_key_env=None, started=time.time())
    return dataclasses.replace(base, **changes)


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_local_home_is_the_workspace_root(tmp_path, monkeypatch):
    from ctxvec.workspace import Workspace

    monkeypatch.setenv("CTXVEC_HOME", str(tmp_path / "ws"))
    assert local_home() == Workspace.from_env().root
    monkeypatch.delenv("CTXVEC_HOME")
    monkeypatch.chdir(tmp_path)
    assert local_home() == Workspace.from_env().root == tmp_path / ".ctxvec"
    monkeypatch.setenv("CTXVEC_HOME", "s3://bucket/ws")
    assert local_home() is None


def test_a_server_is_announced_while_it_runs_and_not_after(tmp_path):
    mine = record()
    with announce(tmp_path, mine) as path:
        assert path == tmp_path / SERVERS_DIR / f"{os.getpid()}.json"
        assert json.loads(path.read_text())["url"] == "http://127.0.0.1:8000"
        assert live_servers(tmp_path) == [mine]
    assert not path.exists() and live_servers(tmp_path) == []


def test_records_of_dead_or_foreign_servers_do_not_count(tmp_path):
    folder = tmp_path / SERVERS_DIR
    folder.mkdir()
    dead = record(pid=dead_pid())
    foreign = record(host="another-machine", pid=1)
    (folder / f"{dead.pid}.json").write_text(dead.to_json())
    (folder / "1.json").write_text(foreign.to_json())
    (folder / "broken.json").write_text("{not json")
    assert live_servers(tmp_path) == []  # reading removes nothing
    assert len(list(folder.glob("*.json"))) == 3
    with announce(tmp_path, record()):  # the next server clears what dead ones left here
        assert sorted(p.name for p in folder.glob("*.json")) == ["1.json", f"{os.getpid()}.json"]


def test_a_read_only_workspace_still_serves(tmp_path):
    (tmp_path / SERVERS_DIR).write_text("a file where the folder should be")
    with announce(tmp_path, record()) as path:
        assert path is None


@pytest.mark.parametrize("host, url", [
    ("127.0.0.1", "http://127.0.0.1:8000"), ("0.0.0.0", "http://127.0.0.1:8000"),
    ("::", "http://[::1]:8000"), ("::1", "http://[::1]:8000"), ("localhost", "http://localhost:8000"),
])
def test_client_url(host, url):
    assert client_url(host, 8000) == url


def test_which_server_answers_for_which_reference():
    champion = record()
    health = {"status": "ok", "ref": champion.ref, "model_version": "3"}
    assert _serves(champion, health, ModelRef.parse("models:/ctxvec-encoder@champion"))
    assert _serves(champion, health, ModelRef.parse("models:/ctxvec-encoder/3"))  # serves v3
    assert not _serves(champion, health, ModelRef.parse("models:/ctxvec-encoder/2"))
    assert not _serves(champion, health, ModelRef.parse("models:/other@champion"))
    assert not _serves(champion, health, ModelRef.parse("models:/ctxvec-encoder@challenger"))
    assert not _serves(champion, {**health, "ref": "models:/x@champion"},
                       ModelRef.parse("models:/ctxvec-encoder@champion"))  # another server
