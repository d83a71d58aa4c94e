"""Hostile-but-fair HTTP input against a real ``ctxvec serve`` process over a real tiny model and
index: lone surrogates, oversized and never-finished headers, idle connections, a foreign Host
header (DNS rebinding), the API key kept out of the process list, server paths kept out of the
answers, and schemathesis fuzzing every operation of ``/openapi.json``.

One workspace and one server for the module: the tiny recipe cut down further (30 documents, two
training steps), built in this process, then served by ``python -m ctxvec.cli serve`` as a user
runs it, with its API key in a file and short header, body and idle timeouts (``--set``), so
that a test waiting for a timeout waits seconds. No test races a clock: each one waits for what
it expects (an answer, the server closing the connection) with a generous deadline.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import REPO, cli_env
from tests.servers import background, free_port, wait_healthy

KEY = "fault-test-key-5c1f"
CUT = ["evaluate.sts=null", "index.factory=Flat", "ingest.max_docs=30", "train.steps=2",
       "train.checkpoint_every=2", "embed.words.sample_docs=20", "index.recall_sample=10",
       "tokenizer.vocab_size=300"]
# short timeouts (the defaults are 10 s, 30 s and 5 s); the size limits are the defaults
SERVE_SETS = ["serve.header_timeout_s=1", "serve.body_timeout_s=2", "serve.keep_alive_s=1"]
MAX_HEADER_BYTES = 32 << 10  # serve.max_header_bytes' default
DEADLINE = 60.0  # for what the server does by itself (answer, time out, close)
FUZZ_EXAMPLES = 12  # per operation and mode
S = "\udc80"  # a lone surrogate: valid in JSON as an escape, not Unicode text


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    pid: int
    home: Path


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """The tiny pipeline, cut down, run in this process (no Prefect): version 1 is champion."""
    from ctxvec.config import load_config
    from ctxvec.stages.runs import run_pipeline
    from ctxvec.workspace import Workspace

    if os.environ.get("MLFLOW_TRACKING_URI"):
        pytest.skip("MLFLOW_TRACKING_URI is set: these tests need the embedded workspace store")
    home = tmp_path_factory.mktemp("http-faults") / "home"
    run_pipeline(load_config(REPO / "configs" / "tiny.yaml", CUT), Workspace(home).ensure())
    return home


@pytest.fixture(scope="module")
def server(home, tmp_path_factory) -> Iterator[Server]:
    """``ctxvec serve`` on 127.0.0.1, its API key read from a file."""
    folder = tmp_path_factory.mktemp("http-faults-server")
    key_file = folder / "api-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    port = free_port()
    args = [sys.executable, "-m", "ctxvec.cli", "serve", "--port", str(port),
            "--api-key-file", str(key_file), "--no-access-log"]
    args += [a for s in SERVE_SETS for a in ("--set", s)]
    env = cli_env(home)
    env.pop("CTXVEC_API_KEY", None)
    with background(args, folder / "server.log", env, cwd=REPO) as proc:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, folder / "server.log", 300)
        yield Server(f"http://127.0.0.1:{port}", port, proc.pid, home)


@pytest.fixture(scope="module")
def api(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=DEADLINE) as c:
        yield c


def still_serving(api: httpx.Client) -> None:
    r = api.post("/search", json={"text": "a football club", "k": 3})
    assert r.status_code == 200 and r.json()["hits"], r.text


def connect(server: Server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed);
    a server that never closes fails the test with a socket timeout after DEADLINE."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def status_and_body(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


# --- item 9: lone surrogates --------------------------------------------------------------


@pytest.mark.parametrize("path, body", [
    ("/search", {"text": f"a {S} b", "k": 3}),
    ("/search", {"text": f"a {S} b", "k": 3, "hybrid": True}),
    ("/search", {"id": f"wiki:{S}", "k": 3}),
    ("/search", {"text": "club", "k": 3, "filters": {"title": S}}),
    ("/search", {"text": "club", "k": 3, "filters": {"title": ["x", S]}}),
    ("/search", {"text": "club", "k": 3, "filters": {S: "x"}}),
    ("/embed", {"texts": ["fine", f"a {S}"]}),
    ("/senses", {"word": "club", "context": f"a {S} club"}),
    ("/senses", {"word": f"cl{S}ub", "context": "a club"}),
    ("/explain", {"text": f"a {S} b"}),
])
def test_a_lone_surrogate_is_a_422_everywhere(api, path, body):
    raw = json.dumps(body).encode()  # ensure_ascii: it travels as the escape \udc80
    assert b"\\udc80" in raw
    r = api.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "validation_error" and "surrogate" in err["message"], err
    still_serving(api)


# --- item 9: header size and slow or idle connections -------------------------------------


def test_headers_over_the_limit_get_a_431(server, api):
    big = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 8192)
    with connect(server) as s:
        s.sendall(big + b"\r\n\r\n")
        status, body = status_and_body(read_until_closed(s))
    assert status == 431 and body["error"]["type"] == "request_header_fields_too_large"
    assert "serve.max_header_bytes" in body["error"]["message"]
    still_serving(api)


def test_a_64_mb_header_is_cut_off_while_health_answers(server, api):
    """The report's case: two clients each streaming a 64 MB header. Each gets its 431 early
    (a client stops sending when the answer is in) and /health answers in between."""
    piece = b"a" * (1 << 20)
    answers = []
    for _ in range(2):
        with connect(server) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
            sent = 0
            while sent < 64 and not select.select([s], [], [], 0)[0]:
                try:
                    s.sendall(piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += 1
            answers.append(read_until_closed(s))
        assert httpx.get(f"{server.url}/health", timeout=DEADLINE).status_code == 200
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    still_serving(api)


@pytest.mark.parametrize("sent", [
    b"",  # connected, never a byte
    b"GET /health HTTP/1.1\r\nHost: localhost\r\n",  # headers never finished
])
def test_a_connection_that_never_finishes_its_headers_is_closed(server, api, sent):
    with connect(server) as s:
        s.sendall(sent)
        answer = read_until_closed(s)
    if sent:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert status_and_body(answer)[1]["error"]["type"] == "request_timeout"
    else:
        assert answer == b""  # nothing was asked: closed without an answer
    still_serving(api)


def test_headers_dripped_byte_by_byte_are_cut_off(server, api):
    """A slowloris client: one byte at a time, never the end of the headers. The header
    deadline counts from the request's first byte, so trickling does not extend it."""
    with connect(server) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        closed = False
        for _ in range(int(DEADLINE / 0.2)):
            if select.select([s], [], [], 0.2)[0]:
                closed = True
                break
            try:
                s.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the server kept a dripping connection open"
        answer = read_until_closed(s)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    still_serving(api)


def test_a_body_that_never_arrives_gets_a_408(server, api):
    with connect(server) as s:
        s.sendall(b"POST /search HTTP/1.1\r\nHost: localhost\r\nX-API-Key: " + KEY.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"te")
        answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    still_serving(api)


def test_an_idle_keep_alive_connection_is_closed(server):
    with connect(server) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = read_until_closed(s)  # the answer, then the close after serve.keep_alive_s
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.count(b"HTTP/1.1") == 1


# --- memory under load ---------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_the_batcher_hands_freed_memory_back_between_batches(server, api):
    """What bounds the server's memory under load (serve/memory.py): between batches, every
    couple of seconds at most, the batcher returns freed pages to the system; /health counts
    it. The server has run for longer than that interval, so a search or two triggers one."""
    for _ in range(int(DEADLINE / 0.5)):
        still_serving(api)
        batching = api.get("/health").json()["batching"]
        if batching["trims"] >= 1:
            break
        time.sleep(0.5)
    assert batching["trims"] >= 1 and batching["trim_s"] >= 0, batching


# --- item 9: Host header on a loopback bind (DNS rebinding) -------------------------------


@pytest.mark.parametrize("host, status", [
    ("localhost:{port}", 200), ("127.0.0.1:{port}", 200), ("[::1]:{port}", 200),
    ("LOCALHOST", 200), ("localhost:9999", 200),  # a tunnelled port (ssh -L) is fine
    ("evil.example:{port}", 421), ("evil.example", 421), ("localhost.evil.example", 421),
    ("127.0.0.1.nip.io:{port}", 421), ("127.0.0.2:{port}", 421), ("[::1]x", 421),
])
def test_only_loopback_host_names_are_answered_on_a_loopback_bind(server, host, status):
    host = host.format(port=server.port)
    for method, path, body in (("GET", "/health", None), ("POST", "/search", {"text": "a"})):
        r = httpx.request(method, f"{server.url}{path}", json=body, timeout=DEADLINE,
                          headers={"Host": host, "X-API-Key": KEY})
        assert r.status_code == status, (host, r.text)
        if status == 421:
            err = r.json()["error"]
            assert err["type"] == "misdirected_request" and "Host" in err["message"]


def test_a_request_without_host_is_refused_on_a_loopback_bind(server):
    with connect(server) as s:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        status, body = status_and_body(read_until_closed(s))
    assert status == 421 and body["error"]["type"] == "misdirected_request"


# --- item 9: the API key never on the command line ----------------------------------------


def test_the_api_key_from_a_file_is_required_and_not_in_the_process_list(server):
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    assert b"--api-key-file" in cmdline and KEY.encode() not in cmdline
    search = {"text": "a football club", "k": 3}
    assert httpx.post(f"{server.url}/search", json=search).status_code == 401
    r = httpx.post(f"{server.url}/search", json=search, headers={"X-API-Key": KEY})
    assert r.status_code == 200
    assert httpx.get(f"{server.url}/health").status_code == 200  # open, as before


def test_api_key_on_the_command_line_warns_and_bad_key_files_are_refused(home, tmp_path,
                                                                          monkeypatch):
    from typer.testing import CliRunner

    from ctxvec.cli import app

    monkeypatch.setenv("CTXVEC_HOME", str(home))
    monkeypatch.delenv("CTXVEC_API_KEY", raising=False)
    missing = ["--model", "models:/ctxvec-encoder/99", "--port", str(free_port())]
    r = CliRunner().invoke(app, ["serve", "--api-key", "visible", *missing])
    assert r.exit_code != 0  # the model does not exist: nothing is served
    assert "--api-key" in r.stderr and "process list" in r.stderr and "--api-key-file" in r.stderr

    empty = tmp_path / "empty-key"
    empty.write_text("\n")
    for args, said in ((["--api-key-file", str(tmp_path / "nope")], "nope"),
                       (["--api-key-file", str(empty)], "empty"),
                       (["--api-key", "a", "--api-key-file", str(empty)], "not both")):
        r = CliRunner().invoke(app, ["serve", *args, *missing])
        assert r.exit_code == 2 and said in r.stderr, (args, r.stderr)


# --- item 9: no server paths in the answers -----------------------------------------------


def test_answers_show_paths_relative_to_the_workspace_and_corpus(api, server):
    hidden = [str(server.home.resolve()), str(REPO)]
    text = {"text": "a football club", "k": 5}
    answers = [api.post("/search", json=text), api.post("/search", json={**text, "hybrid": True}),
               api.get("/models"), api.get("/health")]
    hits = answers[0].json()["hits"]
    answers.append(api.post("/search", json={"id": hits[0]["doc_id"], "k": 3}))
    for r in answers:
        assert r.status_code == 200, r.text
        assert not any(h in r.text for h in hidden), r.text[:2000]
    # the demo corpus is one file: each hit shows its name, and a filter takes what is shown
    assert {h["source"] for a in answers[:2] + answers[-1:] for h in a.json()["hits"]} == {
        "wiki_00.gz"}
    filtered = api.post("/search", json={**text, "filters": {"source": "wiki_00.gz"}}).json()
    assert [h["doc_id"] for h in filtered["hits"]] == [h["doc_id"] for h in hits]
    tags = answers[2].json()["versions"][0]["tags"]
    assert tags["index_uri"] == "indexes/v1"
    assert not any(v.startswith("/") for v in tags.values()), tags


# --- fuzzing: every operation of /openapi.json --------------------------------------------


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_get_no_5xx_and_conform_to_the_schema(server, mode):
    """Generated requests for every operation the live schema lists, valid ones and invalid
    ones (a few per operation: this runs in ``make test``): never a 5xx, and each answer's
    status, content type and body are those the schema documents. (schemathesis' own pytest
    loader does not run on pytest 9, so each operation runs under hypothesis here.)"""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json",
                                           headers={"X-API-Key": KEY})
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/search", "/embed", "/senses", "/explain",
                                               "/health", "/models"}
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    for operation in operations:
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
        def fuzz(case):
            case.call_and_validate(headers={"X-API-Key": KEY}, timeout=DEADLINE, checks=checks)

        try:
            fuzz()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise
            # nothing to make invalid (GET /health: no parameter, no body, no key)
