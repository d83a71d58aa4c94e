"""The README's usage block (the ```bash block under "## Usage"), checked two ways, so that the
README cannot drift from the command line and none of its examples is a trap.

- Every ``ctxvec ...`` line parses against the real command tree: the subcommand exists, its
  options exist, required ones are given, values convert (cheap, default tier).
- ``@pytest.mark.slow`` (``make test-all``): every line runs, in the README's order, on one fresh
  workspace, as a user pastes them one after the other, and each answer is checked to be
  non-empty and sensible (``CHECKS``: the river query finds rivers, the title filter returns
  those titles, ...). What the test changes, and only this:
  - it runs in a temporary folder holding links to the repo's ``configs/`` and ``data/`` (and
    ``../shared`` when the checkout has one beside it), with ``CTXVEC_HOME`` a fresh workspace
    there, so the files the commands write (attn.png, vectors.parquet) stay out of the repo;
  - it first writes the input files the block takes as given: ``sentences.txt`` (three lines)
    and ``q.npy`` (the demo model's vector of "a river in Germany", written after the demo run);
  - a line that needs ``../shared/data`` (in its arguments, or through its recipe: ``NEEDS``) is
    skipped, naming the file, when the file is absent;
  - ``LONG``: options appended to lines that would run for long: fewer training steps, a token
    budget for perplexity, and ``--dry-run`` for ``schedule`` (which serves until Ctrl-C);
  - ``ctxvec serve --port 8000`` runs in the background, on a free port, until the module ends;
    the queries after it may be answered by it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from tests.helpers import REPO, cli_env

README = REPO / "README.md"
SHARED = REPO.parent / "shared"


def usage_lines() -> list[str]:
    """The commands of the README's usage block, continuation lines joined, comments kept."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Usage\n"):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("\n```")]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def ctxvec_args(line: str) -> list[str] | None:
    """The arguments of a ``ctxvec`` line (shell words, comment dropped); None for other lines."""
    words = shlex.split(line, comments=True)
    return words[1:] if words and words[0] == "ctxvec" else None


LINES = [line for line in usage_lines() if ctxvec_args(line) is not None]
IDS = [" ".join(ctxvec_args(line)[:3]) for line in LINES]


def test_the_usage_block_is_found():
    assert len(LINES) >= 30 and any(line.startswith("ctxvec query") for line in LINES)


@functools.cache
def command_tree():
    from ctxvec.cli import app

    return typer.main.get_command(app)


@pytest.mark.parametrize("line", LINES, ids=IDS)
def test_every_usage_line_parses(line):
    cmd = command_tree()
    args, path = ctxvec_args(line), ["ctxvec"]
    while getattr(cmd, "commands", None) and args and args[0] in cmd.commands:
        cmd = cmd.commands[args[0]]
        path.append(args.pop(0))
    assert not getattr(cmd, "commands", None) or "--help" in args, f"{line}: no such command"
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            cmd.make_context(" ".join(path), args)
        except typer.Exit:  # --help
            pass
        except Exception as e:  # click's UsageError and BadParameter
            pytest.fail(f"{line}: {e}")


# --- the slow run ---------------------------------------------------------------------------

# Lines whose recipe reads ../shared/data (the file each one needs)
NEEDS = {"configs/finetune-stsb.yaml": "data/stsbenchmark/sts-train.csv",
         "configs/scratch-mini.yaml": "data/enwiki-wikiextractor"}
# Options appended to long lines (a later --set of the same key wins)
LONG = {
    "ctxvec run --config configs/demo.yaml": ["--set", "train.steps=4"],
    "ctxvec schedule": ["--dry-run"],
    "ctxvec finetune": ["--set", "train.epochs=null", "--set", "train.steps=4",
                        "--set", "train.eval_every=2"],
    "ctxvec pretrain": ["--set", "train.steps=4", "--set", "ingest.max_docs=200"],
    "ctxvec eval perplexity": ["--max-tokens", "200"],
}


@dataclass
class Session:
    cwd: Path
    home: Path
    env: dict[str, str]
    server: subprocess.Popen | None = None
    server_url: str = ""


def needed_file(line: str) -> str | None:
    """The ``../shared`` file a line needs, when it is absent; None when it can run."""
    args = ctxvec_args(line)
    wanted = [a for a in args if a.startswith("../shared/")]
    wanted += ["../shared/" + f for recipe, f in NEEDS.items() if recipe in args]
    missing = [w for w in wanted if not (SHARED / w.removeprefix("../shared/")).exists()]
    return missing[0] if missing else None


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    if os.environ.get("MLFLOW_TRACKING_URI"):
        pytest.skip("MLFLOW_TRACKING_URI is set: the README's commands use the workspace store")
    root = tmp_path_factory.mktemp("readme")
    cwd = root / "checkout"
    cwd.mkdir()
    for name in ("configs", "data"):
        (cwd / name).symlink_to(REPO / name)
    if SHARED.exists():
        (root / "shared").symlink_to(SHARED)
    (cwd / "sentences.txt").write_text("A river in Germany.\nA footballer.\nI saw a saw.\n")
    home = cwd / ".ctxvec"
    s = Session(cwd, home, cli_env(home))
    yield s
    if s.server is not None and s.server.poll() is None:
        s.server.send_signal(signal.SIGINT)
        try:
            s.server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            s.server.kill()


def run(s: Session, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxvec.cli", *args], cwd=s.cwd, env=s.env,
                          capture_output=True, text=True, timeout=3600)


def start_server(s: Session, args: list[str]) -> str:
    from tests.integration.conftest import free_port

    port = str(free_port())
    args = [port if a == "8000" else a for a in args]
    s.server = subprocess.Popen([sys.executable, "-m", "ctxvec.cli", *args], cwd=s.cwd,
                                env=s.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    s.server_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        assert s.server.poll() is None, s.server.stderr.read()
        try:
            with urllib.request.urlopen(s.server_url + "/health", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            assert time.monotonic() < deadline, "ctxvec serve did not start"
            time.sleep(1)


def write_query_vector(s: Session) -> None:
    """q.npy, which the README's --vector-file line reads: the champion's vector of a text."""
    import numpy as np
    import pyarrow.parquet as pq

    (s.cwd / "river.txt").write_text("a river in Germany\n")
    out = run(s, ["encode", "--model", "models:/ctxvec-encoder@champion", "--input",
                  "river.txt", "--output", "river.parquet"])
    assert out.returncode == 0, out.stderr
    vector = pq.read_table(s.cwd / "river.parquet").column("vector")[0].as_py()
    np.save(s.cwd / "q.npy", np.asarray(vector, dtype=np.float32))


def hits(out: str) -> list[dict]:
    return json.loads(out)["hits"]


# Per line (the first key that starts it): a check of its stdout beyond "exit 0, not empty"
CHECKS: dict[str, Callable[[str], bool]] = {
    "ctxvec ingest data/demo --json": lambda o: json.loads(o)["corpus_docs"] > 1000,
    "ctxvec tokenizer train": lambda o: "bpe tokenizer" in o and "fertility" in o,
    "ctxvec run --config configs/tiny.yaml": lambda o: "nearest neighbours" in o,
    "ctxvec run --config configs/demo.yaml": lambda o: "nearest neighbours" in o
    and "version 2" in o,
    "ctxvec embed --model models:/ctxvec-encoder/1 --index": lambda o: "index:" in o,
    "ctxvec embed --model minilm --words --json": lambda o: json.loads(o)["embeddings"]["rows"]
    > 1000,
    'ctxvec query "a river in Germany" -k 5 --model': lambda o: len(hits(o)) == 5,
    'ctxvec query "a river in Germany"': lambda o: o.count("river") >= 3,
    "ctxvec query --id wiki:56571622": lambda o: o.count("footballer") >= 2
    and "wiki:56571622" not in o,
    "ctxvec query --vector-file q.npy": lambda o: "river" in hits(o)[0]["text"],
    'ctxvec query "Scottish football"': lambda o: "scotland" in o.lower()
    or "scottish" in o.lower(),
    'ctxvec query "a river" -k 2 --filter': lambda o: "[Oberach]" in o and "[Mauerner Bach]" in o,
    "ctxvec query --word bank": lambda o: "[bank]" in o.lower(),
    "ctxvec explain": lambda o: "wrote attn.png" in o,
    "ctxvec models list": lambda o: "2" in o and "champion" in o,
    "ctxvec models show champion --json": lambda o: str(json.loads(o)["version"]) == "2",
    "ctxvec models promote 1": lambda o: "-> v1" in o,
    "ctxvec models rollback": lambda o: "-> v2 (rolled back)" in o,
    "ctxvec models drift 1 2 --json": lambda o: bool(json.loads(o)),
    "ctxvec schedule": lambda o: "ctxvec-pipeline" in o or "demo" in o,
    "ctxvec encode": lambda o: "wrote 3 vectors" in o,
    "ctxvec eval": lambda o: bool(o.strip()),
    "ctxvec --help": lambda o: "Usage" in o,
}


def check_of(line: str) -> Callable[[str], bool] | None:
    words = " ".join(shlex.split(line, comments=True))
    return next((c for key, c in CHECKS.items() if words.startswith(key)), None)


@pytest.mark.slow
@pytest.mark.parametrize("line", LINES, ids=IDS)
def test_every_usage_line_runs_and_answers_sensibly(session, line):
    missing = needed_file(line)
    if missing:
        pytest.skip(f"needs {missing} beside the checkout: "
                    f"{SHARED / missing.removeprefix('../shared/')} not found")
    args = ctxvec_args(line)
    words = " ".join(args)
    args += next((extra for key, extra in LONG.items() if f"ctxvec {words}".startswith(key)), [])
    if args[0] == "serve":
        health = json.loads(start_server(session, args))
        assert health["status"] == "ok" and health["model_version"] == "2", health
        return
    if "--vector-file" in args and not (session.cwd / "q.npy").exists():
        write_query_vector(session)
    out = run(session, args)
    assert out.returncode == 0, f"{line}\nexit {out.returncode}\n{out.stderr[-3000:]}"
    assert out.stdout.strip(), f"{line}: printed nothing\n{out.stderr[-2000:]}"
    if "--json" in args:
        json.loads(out.stdout)  # exactly one JSON object
    check = check_of(line)
    assert check is None or check(out.stdout), f"{line}: not the answer expected:\n{out.stdout}"
    if args[0] == "explain":
        assert (session.cwd / "attn.png").stat().st_size > 1000
    if args[0] == "encode":
        assert (session.cwd / "vectors.parquet").exists()
