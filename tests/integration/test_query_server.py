"""``ctxvec query`` answered by a running ``ctxvec serve`` of the same workspace: a query that
the server can answer goes to it (loading neither torch, faiss nor mlflow) and prints exactly
what the query computed in process prints; a query it cannot answer (another recipe, another
version) is computed in process.

The default tier serves the app from a thread of the test process and writes its record as
``ctxvec serve`` does (cheap: the model is loaded once, in process); the slow test runs the real
``ctxvec serve`` and checks that it announces itself and takes its record away."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, cli_env
from tests.integration.conftest import free_port

HEAVY = {"torch", "faiss", "mlflow", "transformers"}
# ctxvec's command line, reporting on stderr which heavy packages it imported
TRACED = f"""import sys
from ctxvec.cli import main
try:
    main()
finally:
    print("IMPORTED", sorted({{m.split(".")[0] for m in sys.modules}} & set({sorted(HEAVY)!r})),
          file=sys.stderr)
"""


@dataclass
class Server:
    home: Path
    url: str
    record: Path | None  # the record file that announces it


@pytest.fixture(scope="module")
def server(served_workspace):
    """The champion served from a thread of this process (as ``ctxvec serve`` serves it) and
    announced in the workspace as ``ctxvec serve`` announces itself."""
    import os
    import socket

    from ctxvec.config import load_config
    from ctxvec.serve.app import create_app
    from ctxvec.serve.discovery import ServerRecord, announce
    from ctxvec.workspace import Workspace
    from tests.integration.conftest import uvicorn_in_thread

    home = served_workspace.home
    app = create_app(Workspace(home), load_config(None, []))  # `ctxvec serve`, no --config
    with uvicorn_in_thread(app) as url:
        record = ServerRecord(url=url, pid=os.getpid(), host=socket.gethostname(),
                              ref="models:/ctxvec-encoder@champion", config=None,
                              answers_as_recipe=True, api_key_env=None, started=time.time())
        with announce(home, record) as path:
            yield Server(home, url, path)


def traced(home: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    proc = subprocess.run([sys.executable, "-c", TRACED, *args], cwd=REPO, env=cli_env(home),
                          capture_output=True, text=True, timeout=300)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("IMPORTED"))
    return proc, set(eval(line.removeprefix("IMPORTED ")))  # noqa: S307 (our own print)


def in_process(home: Path, monkeypatch, *args: str, server: bool = False):
    """``ctxvec query ARGS`` in this process (--no-server unless ``server``) -> its JSON."""
    from typer.testing import CliRunner

    from ctxvec.cli import app

    monkeypatch.setenv("CTXVEC_HOME", str(home))
    result = CliRunner().invoke(app, ["query", *args, "--server" if server else "--no-server"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _a_doc_and_a_word(corpus) -> tuple[dict, str, str]:
    """A document, a word of its first sentence and that sentence (the sense index samples
    every document of the tiny corpus)."""
    from ctxvec.ingest.corpus import iter_corpus

    docs = (r for b in iter_corpus(corpus, ("doc_id", "text", "source")) for r in b.to_pylist())
    for doc in docs:
        sentence = doc["text"].split(". ")[0][:300]
        words = [w for w in sentence.split() if w.isalpha() and len(w) >= 6]
        if words:
            return doc, words[0], sentence
    raise AssertionError("no document with a sentence")


def test_a_query_goes_to_the_server_and_prints_what_it_would_compute(server, monkeypatch,
                                                                     served_workspace):
    doc, word, sentence = _a_doc_and_a_word(served_workspace.summary["snapshot"]["corpus"])
    name = Path(doc["source"]).name  # a source filter by file name
    for args in (["a football club in England", "-k", "3", "--json"],
                 ["--id", doc["doc_id"], "-k", "3", "--filter", f"source={name}", "--json"],
                 ["--word", word, "--context", sentence, "-k", "2", "--json"]):
        proc, imported = traced(server.home, "query", *args)
        assert proc.returncode == 0, proc.stderr
        assert f"answered by ctxvec serve at {server.url}" in proc.stderr
        assert imported == set(), f"the server path imported {imported}"
        assert json.loads(proc.stdout) == in_process(server.home, monkeypatch, *args), args


def test_a_query_the_server_cannot_answer_is_computed_here(server, tmp_path, monkeypatch,
                                                          caplog):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("query: {rrf_k: 10}\n")  # another recipe than the server's
    with caplog.at_level("INFO", logger="ctxvec"):
        hits = in_process(server.home, monkeypatch, "a football club", "-k", "2", "--config",
                          str(recipe), "--json", server=True)["hits"]
        assert len(hits) == 2
        pinned = in_process(server.home, monkeypatch, "a football club", "-k", "2", "--model",
                            "models:/ctxvec-encoder/1", "--json", server=True)["hits"]
    said = [r.getMessage() for r in caplog.records if "answered by ctxvec serve" in r.getMessage()]
    assert len(said) == 1  # the pinned version it serves, not the other recipe
    assert [h["doc_id"] for h in pinned] == [h["doc_id"] for h in hits]  # v1 is the champion


def test_a_filter_that_matches_nothing_says_so(server, monkeypatch):
    from typer.testing import CliRunner

    from ctxvec.cli import app

    monkeypatch.setenv("CTXVEC_HOME", str(server.home))
    for where in ("--server", "--no-server"):
        result = CliRunner().invoke(app, ["query", "a club", "--filter", "source=00.gz", where])
        assert result.exit_code == 0, result.output
        assert "no indexed document matches --filter source=00.gz" in result.stdout


def test_the_web_pages_example_filter_matches_the_demo_files(server):
    """The page's filter placeholder names a file of data/demo as a user would: it must match."""

    page = (REPO / "src" / "ctxvec" / "serve" / "static" / "index.html").read_text()
    example = re.search(r'id="filters"[^>]*placeholder="([^"]+)"', page).group(1)
    key, _, value = example.partition("=")
    body = json.dumps({"text": "a football club", "k": 3, "filters": {key: value}}).encode()
    request = urllib.request.Request(server.url + "/search", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        found = json.loads(resp.read())["hits"]
    assert len(found) == 3 and all(h["source"].endswith(value) for h in found), found


def test_a_bad_query_fails_through_the_server_as_here(server):
    proc, _ = traced(server.home, "query", "--id", "no-such-doc", "-k", "2")
    assert proc.returncode == 2 and "unknown document id 'no-such-doc'" in proc.stderr
    assert "answered by ctxvec serve" not in proc.stderr


@pytest.mark.slow
def test_ctxvec_serve_announces_itself_while_it_runs(served_workspace):
    """The real command: its record while it runs, a query it answers, no record after."""
    home, port = served_workspace.home, free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctxvec.cli", "serve", "--port", str(port), "--no-access-log"],
        cwd=REPO, env=cli_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, record = f"http://127.0.0.1:{port}", home / "servers" / f"{proc.pid}.json"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                urllib.request.urlopen(url + "/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "ctxvec serve did not start"
                time.sleep(0.5)
        written = json.loads(record.read_text())
        assert written["url"] == url and written["pid"] == proc.pid and written["config"] is None
        assert written["ref"] == "models:/ctxvec-encoder@champion"
        out, imported = traced(home, "query", "a football club", "-k", "2", "--json")
        assert out.returncode == 0 and f"answered by ctxvec serve at {url}" in out.stderr
        assert imported == set() and len(json.loads(out.stdout)["hits"]) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert not record.exists()
