"""Faults of the workspace, the stages and the Prefect flows (issue 15).

- The stage cache holds JSON records only: a planted pickle is never unpickled (nothing it
  carries runs), a record of the wrong type is never used; the stage runs again instead.

Every process is real (``python -m ctxvec.cli``). Waits poll for a condition with a generous
deadline.
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

import pytest

from ctxvec.artifacts import EvalReport, IndexArtifact, TokenizerArtifact
from ctxvec.stages import BY_NAME, keys, records
from ctxvec.workspace import Workspace
from tests.flows.runs import small_run_overrides, task_runs, write_corpus
from tests.helpers import REPO, TINY, cli_env

DEADLINE = 300.0  # seconds any wait below may take on a loaded machine before it fails


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


# --- the same run, its cache poisoned -------------------------------------------------------


def run_summary(home: Path, tmp: Path, name: str, prefect_api: str, corpus: Path,
                **env: str) -> tuple[int, dict | None, str]:
    sets = [a for o in small_run_overrides(corpus) for a in ("--set", o)]
    proc = start_cli(home, tmp, name, "run", "--config", str(TINY), *sets, "--json",
                     prefect_api=prefect_api, **env)
    rc, out, err = finish(proc, tmp, name)
    return rc, (json.loads(out) if rc == 0 else None), err


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
