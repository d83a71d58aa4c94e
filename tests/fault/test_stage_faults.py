"""Faults of the workspace, the stages and the Prefect flows: a poisoned result cache, two
writers at once, and processes killed at stage boundaries (issue 15, items 6, 7 and 10).

- The stage cache holds JSON records only: a planted pickle is never unpickled (nothing it
  carries runs), a record of the wrong type is never used; the stage runs again instead.
- One writer at a time per workspace (``Workspace.lock``): a second one exits 2 naming the
  holder, or waits for it with ``CTXVEC_LOCK_TIMEOUT``; a killed holder releases the lock.
- A writer killed with SIGKILL leaves staging folders that the next writer clears, and a
  Prefect ephemeral server that dies with it; a re-run completes the work as an uninterrupted
  run does.

Every process is real (``python -m ctxvec.cli``); kills are SIGKILL from the crash points of
``ctxvec.faults`` (``CTXVEC_CRASH_AT``). Waits poll for a condition with a generous deadline.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ctxvec.artifacts import EvalReport, IndexArtifact, TokenizerArtifact
from ctxvec.stages import BY_NAME, keys, records
from ctxvec.workspace import Workspace, WorkspaceBusyError, read_json
from tests.flows.runs import small_run_overrides, task_runs, write_corpus
from tests.helpers import REPO, TINY, cli_env

COUNTS = ("kept", "duplicates", "near_duplicates", "filtered", "quarantined", "deferred")
DEADLINE = 300.0  # seconds any wait below may take on a loaded machine before it fails

# A process that holds a workspace's writer lock until its stdin closes or it is killed.
HOLDER = """
import sys
from ctxvec.workspace import Workspace
with Workspace(sys.argv[1]).lock("the test's lock holder"):
    print("held", flush=True)
    sys.stdin.read()
"""


class Boom:
    """Unpickling it creates the folder ``path``: the proof that a cache file ran code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


# --- helpers ------------------------------------------------------------------------------------


def wait_for(condition, what: str, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def start_cli(home: Path, tmp: Path, name: str, *args: str, prefect_api: str | None = None,
              **env: str) -> subprocess.Popen:
    """``python -m ctxvec.cli ARGS`` in its own session, output to ``tmp/name.out|err``."""
    with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "ctxvec.cli", *args], cwd=REPO,
                                env=cli_env(home, prefect_api, **env), stdout=out, stderr=err,
                                start_new_session=True)


def finish(proc: subprocess.Popen, tmp: Path, name: str) -> tuple[int, str, str]:
    """Wait for a CLI process; kill whatever its session left; -> (rc, stdout, stderr)."""
    try:
        rc = proc.wait(timeout=DEADLINE)
    finally:
        kill_group(proc.pid)
    return rc, (tmp / f"{name}.out").read_text(), (tmp / f"{name}.err").read_text()


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def hold_lock(home: Path) -> subprocess.Popen:
    """A process holding ``home``'s writer lock (``held`` on its stdout once it does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=cli_env(home))
    assert proc.stdout.readline().strip() == "held"
    return proc


def ingest(home: Path, tmp: Path, name: str, corpus: Path, **env: str) -> tuple[int, str, str]:
    proc = start_cli(home, tmp, name, "ingest", str(corpus), "--config", str(TINY), "--set",
                     "ingest.max_docs=null", "--json", **env)
    return finish(proc, tmp, name)


def snapshot_docs(home: Path) -> dict[str, list[str]]:
    """Committed snapshot -> the doc ids it holds."""
    out = {}
    for folder in sorted((home / "snapshots").glob("[!.]*")):
        if (folder / "manifest.json").is_file():
            out[folder.name] = sorted(i for f in sorted(folder.glob("docs-*.parquet"))
                                      for i in pq.read_table(f, columns=["doc_id"])
                                      .column("doc_id").to_pylist())
    return out


def staging_left(home: Path) -> list[Path]:
    return sorted(p for pat in ("*/.tmp-*", "*/.old-*", "runs/*/.tmp-*")
                  for p in home.glob(pat))


def assert_counts_add_up(snap: dict) -> None:
    """read == kept + duplicates + near_duplicates + filtered + quarantined + deferred"""
    assert snap["read"] == sum(snap[k] for k in COUNTS), snap


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("stage-faults") / "corpus", 300)


# --- item 6: the stage cache holds JSON records, validated; nothing in it runs -----------------


def test_records_round_trip_and_anything_else_is_refused(tmp_path):
    idx = IndexArtifact(str(tmp_path / "indexes" / "v1"), "Flat", 10, 32, 1.0, "1")
    assert records.loads(records.dumps(idx)) == idx
    report = EvalReport({"sts_spearman": 0.5, "ppl": float("nan")}, {"wic": "no data"})
    back = records.loads(records.dumps(report))
    assert back.metrics["sts_spearman"] == 0.5 and back.skipped == report.skipped
    # read back exactly as written: the record's identity is part of the next stages' keys
    tok = TokenizerArtifact(str(tmp_path), "0" * 64, 100, "wordpiece",
                            {"heldout_docs": 2, "fertility": 1.5})
    assert keys.identity(records.loads(records.dumps(tok))) == keys.identity(tok)
    assert type(records.loads(records.dumps(tok)).stats["heldout_docs"]) is int
    import cloudpickle

    marker = tmp_path / "ran"
    refused = [
        cloudpickle.dumps(Boom(marker)),  # a pickle
        b'{"type": "os.system", "fields": {"command": "touch x"}}',  # not a record type
        b'{"type": "IndexArtifact", "fields": {"path": "x"}}',  # fields missing
        json.dumps({"type": "IndexArtifact", "fields": {**idx.to_dict(), "count": "10"}}
                   ).encode(),  # a count that is a string: no coercion
        json.dumps({"type": "IndexArtifact", "fields": {**idx.to_dict(), "x": 1}}).encode(),
        b"[]", b"",
    ]
    for blob in refused:
        with pytest.raises(records.RecordError):
            records.loads(blob)
    assert not marker.exists()
    with pytest.raises(records.RecordError):
        records.dumps({"path": "x"})  # only stage records are cached


def test_a_planted_cache_file_is_refused_and_nothing_in_it_runs(tmp_path):
    """Whatever sits under a stage's key (a Prefect result record naming ``pickle``, which
    Prefect would unpickle whatever the task's serializer; a raw pickle; Prefect's JSON with a
    class to import; garbage) is refused: a miss under the same key, which the stage's new
    record overwrites. A valid record of this stage is a hit."""
    import cloudpickle
    from ctxvec_flows import caching
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import JSONSerializer, PickleSerializer

    ws = Workspace(tmp_path / "home").ensure()
    marker, log = tmp_path / "ran", logging.getLogger("test")
    planted = [
        ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer()),
                     result=Boom(marker)).serialize(),
        cloudpickle.dumps(Boom(marker)),
        json.dumps({"metadata": {"serializer": JSONSerializer().model_dump()},
                    "result": json.dumps({"__class__": "os.mkdir", "data": str(marker)})
                    }).encode(),
        b"\x80\x04garbage",
    ]
    index = BY_NAME["index"]
    folder = ws.indexes / "v1"
    folder.mkdir(parents=True)
    idx = IndexArtifact(str(folder), "Flat", 10, 32, 1.0, "1")
    for i, content in enumerate(planted):
        (caching.results_dir(ws) / f"k{i}").parent.mkdir(exist_ok=True)
        (caching.results_dir(ws) / f"k{i}").write_bytes(content)
        assert caching.lookup(index, ws, f"k{i}", log) == (None, f"k{i}")
        caching.store(ws, f"k{i}", idx)  # the stage's record replaces it
        assert caching.lookup(index, ws, f"k{i}", log) == (idx, f"k{i}")
    assert not marker.exists(), "a cache file ran code"
    # a valid record of another stage's type is not used: the key moves on
    caching.store(ws, "other", EvalReport({}, {}))
    hit, key = caching.lookup(index, ws, "other", log)
    assert hit is None and key != "other"


def test_a_cached_record_is_used_only_if_it_is_the_stages_own(tmp_path):
    ws = Workspace(tmp_path / "home").ensure()
    folder = ws.indexes / "v1"
    folder.mkdir(parents=True)
    idx = IndexArtifact(str(folder), "Flat", 10, 32, 1.0, "1")
    index, evaluate = BY_NAME["index"], BY_NAME["evaluate"]
    assert index.usable(idx, ws)
    # no paths at all: outputs_exist alone said yes (all([]) is True)
    assert not index.usable(EvalReport({}, {}), ws)
    assert not evaluate.usable(idx, ws)
    assert evaluate.usable(EvalReport({"x": 1.0}, {}), ws)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert not index.usable(IndexArtifact(str(outside), "Flat", 10, 32, 1.0, "1"), ws)
    assert not index.usable({"path": str(folder)}, ws)
    with pytest.raises(TypeError, match="declare the record type"):
        type(index)("x", (), (), lambda: None, index.keyed)


# --- item 7: one writer at a time -------------------------------------------------------------


def test_a_second_writer_exits_2_naming_the_holder_and_a_killed_holder_frees_it(tmp_path,
                                                                                 corpus):
    home = tmp_path / "home"
    home.mkdir()
    holder = hold_lock(home)
    leftover = home / "snapshots" / ".tmp-20990101-000000-deadbeef"
    leftover.mkdir(parents=True)  # the live holder's staging: must survive the refused writer
    try:
        rc, _, err = ingest(home, tmp_path, "busy", corpus)
        assert rc == 2, err
        assert f"pid {holder.pid}" in err and "the test's lock holder" in err
        assert "CTXVEC_LOCK_TIMEOUT" in err
        assert leftover.is_dir() and snapshot_docs(home) == {}
        with pytest.raises(WorkspaceBusyError, match=f"pid {holder.pid}"):
            with Workspace(home).lock():
                pass
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock; the next writer clears its staging
    with Workspace(home).lock():
        assert not leftover.exists()


def test_a_writer_waits_for_the_lock_when_asked_to(tmp_path, corpus):
    home = tmp_path / "home"
    home.mkdir()
    holder = hold_lock(home)
    try:
        proc = start_cli(home, tmp_path, "waits", "ingest", str(corpus), "--config", str(TINY),
                         "--set", "ingest.max_docs=null", "--json", CTXVEC_LOCK_TIMEOUT="600")
        wait_for(lambda: "waiting up to 600 s" in (tmp_path / "waits.err").read_text(),
                 "the ingest to wait for the lock")
        assert proc.poll() is None
    finally:
        holder.stdin.close()  # the holder leaves its block and exits
        holder.wait()
    rc, out, err = finish(proc, tmp_path, "waits")
    assert rc == 0, err
    assert_counts_add_up(json.loads(out))


def test_concurrent_ingests_never_commit_the_same_documents_twice(tmp_path, corpus):
    home = tmp_path / "home"
    procs = [start_cli(home, tmp_path, f"ingest{i}", "ingest", str(corpus), "--config",
                       str(TINY), "--set", "ingest.max_docs=null", "--json") for i in range(2)]
    results = [finish(p, tmp_path, f"ingest{i}") for i, p in enumerate(procs)]
    assert sorted(rc for rc, _, _ in results) in ([0, 0], [0, 2]), results
    created = [json.loads(out) for rc, out, _ in results if rc == 0]
    assert sum(s["created"] for s in created) == 1
    for s in created:
        assert_counts_add_up(s)
    snaps = snapshot_docs(home)
    assert len(snaps) == 1
    (docs,) = snaps.values()
    assert len(docs) == len(set(docs)) == next(s["kept"] for s in created if s["created"])


# --- item 10: what a killed writer leaves -------------------------------------------------------


def test_a_killed_ingest_leaves_staging_the_next_one_clears_and_completes(tmp_path, corpus):
    home, clean = tmp_path / "home", tmp_path / "clean"
    rc, _, err = ingest(home, tmp_path, "killed", corpus,
                        CTXVEC_CRASH_AT="before-rename:snapshots")
    assert rc == -signal.SIGKILL, err
    assert staging_left(home) and snapshot_docs(home) == {}
    rc, out, err = ingest(home, tmp_path, "rerun", corpus)
    assert rc == 0, err
    assert staging_left(home) == []
    rc, ref, err = ingest(clean, tmp_path, "uninterrupted", corpus)
    assert rc == 0, err
    after, ref = json.loads(out), json.loads(ref)
    assert_counts_add_up(after)
    assert {k: after[k] for k in ("read", *COUNTS)} == {k: ref[k] for k in ("read", *COUNTS)}
    assert list(snapshot_docs(home).values()) == list(snapshot_docs(clean).values())


@pytest.mark.slow  # about 30 s: Prefect's ephemeral server starts in the killed run
def test_the_ephemeral_prefect_server_dies_with_a_killed_run(tmp_path, corpus):
    """``ctxvec run`` on Prefect's ephemeral server (no PREFECT_API_URL), killed after ingest:
    nothing of its process group is left (the server was orphaned before)."""
    home = tmp_path / "home"
    sets = [a for o in small_run_overrides(corpus) for a in ("--set", o)]
    proc = start_cli(home, tmp_path, "run", "run", "--config", str(TINY), *sets,
                     CTXVEC_CRASH_AT="stage-done:ingest")
    try:
        rc = proc.wait(timeout=DEADLINE)
        err = (tmp_path / "run.err").read_text()
        assert rc == -signal.SIGKILL, err
        assert "crash point stage-done:ingest" in err
        wait_for(lambda: not group_alive(proc.pid), "the orphaned Prefect server to exit", 60)
    finally:
        kill_group(proc.pid)


# --- kills at every stage boundary of `ctxvec run` ---------------------------------------------

# after each stage returned (its record cached when it has a key)
PIPELINE_POINTS = [f"stage-done:{s}" for s in ("ingest", "tokenizer", "pack", "train",
                                               "evaluate", "register", "embed", "index",
                                               "promote")]
# inside a stage: its output written but its record not cached (stage-ran), or its staging
# folder complete but not renamed into place (before-rename)
INSIDE_POINTS = ["stage-ran:train", "stage-ran:index", "before-rename:tokenizers",
                 "before-rename:runs", "before-rename:indexes",
                 "stage-ran:register"]


def run_summary(home: Path, tmp: Path, name: str, prefect_api: str, corpus: Path,
                **env: str) -> tuple[int, dict | None, str]:
    sets = [a for o in small_run_overrides(corpus) for a in ("--set", o)]
    proc = start_cli(home, tmp, name, "run", "--config", str(TINY), *sets, "--json",
                     prefect_api=prefect_api, **env)
    rc, out, err = finish(proc, tmp, name)
    return rc, (json.loads(out) if rc == 0 else None), err


def comparable(s: dict) -> dict:
    """What an interrupted-then-completed run must share with an uninterrupted one (the model's
    weights are left out: the tokenizer's training is not reproducible, issue 15 item 11)."""
    snap = s["snapshot"]
    counts = read_json(Path(snap["path"]) / "manifest.json")["counts"]  # a re-run read nothing
    assert_counts_add_up(counts)
    return {"snapshot": (counts, snap["corpus_docs"], len(snap["corpus"])),
            "tokenizer": s["tokenizer"]["vocab_size"], "steps": s["train"]["steps"],
            "version": s["model"]["version"], "champion": s["champion"],
            "index": (s["index"]["count"], s["index"]["dim"]),
            "hits": len(s["sample_query"]["hits"])}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prefect_api, corpus) -> tuple[Path, dict]:
    """``ctxvec run`` uninterrupted -> (its workspace, its summary)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    rc, summary, err = run_summary(tmp / "home", tmp, "run", prefect_api, corpus)
    assert rc == 0, err
    return tmp / "home", summary


def run_flow(home: Path, overrides: list[str]) -> tuple[dict, dict[str, str]]:
    from ctxvec_flows.pipeline import pipeline

    state = pipeline(str(TINY), overrides, str(home), return_state=True)
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    return state.result(), {name: r.state.name for name, r in runs.items()}


def cache_files(home: Path) -> dict[str, Path]:
    """Record type -> its file in the workspace's stage cache (one each in a first run)."""
    return {json.loads(f.read_bytes())["type"]: f for f in (home / "prefect-results").iterdir()}


def test_a_poisoned_cache_runs_nothing_and_the_run_recomputes(tmp_path, corpus, uninterrupted,
                                                              prefect_client, monkeypatch):
    """The uninterrupted run's cache poisoned, then the same run again (in this process)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    home, first = uninterrupted
    marker = tmp_path / "ran"
    files = cache_files(home)
    assert set(files) >= {"TokenizerArtifact", "EvalReport", "IndexArtifact"}
    # the index's record replaced by a pickle that runs code when loaded; the evaluation's by a
    # valid record of another type whose files exist (the tokenizer's)
    files["IndexArtifact"].write_bytes(ResultRecord(
        metadata=ResultRecordMetadata(serializer=PickleSerializer()),
        result=Boom(marker)).serialize())
    files["EvalReport"].write_bytes(files["TokenizerArtifact"].read_bytes())

    second, states = run_flow(home, small_run_overrides(corpus))
    assert not marker.exists(), "a cached result ran code"
    assert states["index"] == "Completed" and states["evaluate"] == "Completed"
    assert states["tokenizer"] == "Cached" and states["train"] == "Cached"
    assert second["evaluate"] == first["evaluate"] and second["model"] == first["model"]
    assert second["index"]["count"] == first["index"]["count"]
    assert second["sample_query"]["hits"]
    # the refused pickle was overwritten with the index's record
    assert records.loads(files["IndexArtifact"].read_bytes()).to_dict() == second["index"]


def killed_then_rerun(tmp: Path, prefect_api: str, corpus: Path, point: str) -> dict:
    home = tmp / "home"
    rc, _, err = run_summary(home, tmp, "killed", prefect_api, corpus, CTXVEC_CRASH_AT=point)
    assert rc == -signal.SIGKILL, err[-3000:]
    assert f"crash point {point}" in err
    rc, summary, err = run_summary(home, tmp, "rerun", prefect_api, corpus)
    assert rc == 0, err[-3000:]
    assert staging_left(home) == []
    for f in (home / "prefect-results").iterdir():  # every cached record is a valid one
        records.loads(f.read_bytes())
    assert read_json(Path(summary["index"]["path"]) / "manifest.json")["count"]
    return comparable(summary)


@pytest.mark.slow  # about 60 s: a killed run and its re-run
def test_run_killed_after_training_completes_like_an_uninterrupted_run(tmp_path, corpus,
                                                                       prefect_api,
                                                                       uninterrupted):
    expected = comparable(uninterrupted[1])
    assert killed_then_rerun(tmp_path, prefect_api, corpus, "stage-done:train") == expected


@pytest.mark.slow
@pytest.mark.parametrize("point", [p for p in PIPELINE_POINTS + INSIDE_POINTS
                                   if p != "stage-done:train"])  # that one: the test above
def test_run_killed_at_a_stage_boundary_completes_like_an_uninterrupted_run(
        tmp_path, corpus, prefect_api, uninterrupted, point):
    assert killed_then_rerun(tmp_path, prefect_api, corpus, point) == comparable(uninterrupted[1])
