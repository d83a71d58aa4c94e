"""Ingest under damaged input: every case of the corrupt-input corpus (tests/fault/corrupt.py) is
ingested beside a good file. Whatever the damage, ingest finishes, keeps the good file, and
accounts for every record it read, the records inside a rejected file included:

    read == kept + duplicates + near_duplicates + filtered + quarantined + deferred

Then the command-line faults: a symlink loop given as a source is a user error (exit 2), and the
worker processes of an ingest killed with SIGKILL do not outlive it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctxvec.config import load_config
from ctxvec.ingest.corpus import doc_files
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.workspace import Workspace, read_json
from tests.fault import corrupt
from tests.helpers import REPO, cli_env

COUNTS = ("kept", "duplicates", "near_duplicates", "filtered", "quarantined", "deferred")


def _ingest(home: Path, source: Path, workers: int = 1, **settings):
    sets = [f"ingest.sources={json.dumps([str(source)])}", f"ingest.workers={workers}"]
    sets += [f"ingest.{k}={json.dumps(v)}" for k, v in settings.items()]
    return run_ingest(load_config(None, sets), Workspace(home).ensure())


def _accounted(snap) -> bool:
    return snap.read == sum(getattr(snap, k) for k in COUNTS)


class _Outcome:
    """What one snapshot made of the files under a folder: records read, documents kept and
    rejected records, by file."""

    def __init__(self, snap):
        self.manifest = read_json(Path(snap.path) / "manifest.json")
        docs = pa.concat_tables([pq.read_table(f, columns=["text", "source"])
                                 for f in doc_files([snap.path])])
        self.docs = docs.to_pylist()
        with open(Path(snap.path) / "rejected.jsonl", encoding="utf-8") as f:
            self.rejected = [json.loads(line) for line in f]

    def files(self, folder: Path, good: bool | None = None) -> list[dict]:
        return [f for f in self.manifest["files"] if Path(f["path"]).parent == folder.resolve()
                and (good is None or (Path(f["path"]).name == corrupt.GOOD_FILE) == good)]

    def kept(self, paths: set[str]) -> list[str]:
        return [d["text"] for d in self.docs if d["source"] in paths]

    def rejects(self, paths: set[str]) -> list[dict]:
        return [r for r in self.rejected if r["source"] in paths]


def _check_case(case: corrupt.Case, folder: Path, out: _Outcome) -> None:
    bad_files = out.files(folder, good=False)
    assert bad_files, f"{case.name}: no bad file was read"
    bad = {f["path"] for f in bad_files}
    read = sum(f["read"] for f in bad_files)
    kept, rejects = out.kept(bad), out.rejects(bad)
    # every record read from the bad files is kept or rejected, none lost in between
    assert read == len(kept) + len(rejects), (case.name, read, len(kept), Counter(
        r["reason"] for r in rejects))
    quarantined = [r for r in rejects if r["kind"] == "quarantined"]
    exp = case.expect
    if exp.reason is not None:
        assert quarantined and all(exp.reason in r["reason"] for r in quarantined), (
            case.name, Counter(r["reason"] for r in quarantined))
    if exp.quarantined is not None:
        assert len(quarantined) == exp.quarantined, (case.name, Counter(
            r["reason"] for r in quarantined))
    if exp.kept is not None:
        assert len(kept) == exp.kept, (case.name, len(kept), Counter(r["reason"] for r in rejects))
    assert all(f["complete"] != (exp.damaged or exp.unreadable)
               and bool(f.get("damaged")) == exp.damaged for f in bad_files), bad_files
    # the good file beside the bad one is kept whole
    good = {f["path"] for f in out.files(folder, good=True)}
    assert sorted(out.kept(good)) == sorted(corrupt.good_texts(case)), case.name


@pytest.mark.parametrize("case", corrupt.CASES, ids=lambda c: c.name)
def test_each_damaged_input_is_accounted_for(case, tmp_path):
    folder = corrupt.build(case, tmp_path / "src")
    snap = _ingest(tmp_path / "home", folder, **case.settings)
    assert _accounted(snap), snap
    _check_case(case, folder, _Outcome(snap))


def test_every_damaged_input_at_once_in_parallel(tmp_path):
    """The whole corpus in one ingest on two worker processes: the per-case outcomes hold and so
    does the count invariant of the snapshot."""
    cases = [c for c in corrupt.CASES if not c.settings]
    folders = corrupt.build_all(tmp_path / "src", cases)
    snap = _ingest(tmp_path / "home", tmp_path / "src", workers=2)
    assert _accounted(snap), snap
    out = _Outcome(snap)
    assert out.manifest["counts"]["read"] == sum(f["read"] for f in out.manifest["files"])
    for case in cases:
        _check_case(case, folders[case.name], out)


def test_damaged_file_is_read_again_once_replaced(tmp_path):
    """A damaged archive is not recorded as complete: once replaced by a whole one, the next
    ingest reads it and keeps its records."""
    src = tmp_path / "src"
    src.mkdir()
    whole = corrupt.jsonl(corrupt.texts("again", 50))
    zst = corrupt.zstandard.ZstdCompressor().compress(whole)
    (src / "a.jsonl.zst").write_bytes(zst[:-5])
    (src / "b.jsonl").write_bytes(corrupt.small("b"))
    first = _ingest(tmp_path / "home", src)
    assert first.kept == 3 and first.quarantined >= 1 and _accounted(first)
    (src / "a.jsonl.zst").write_bytes(zst)
    second = _ingest(tmp_path / "home", src)
    assert second.kept == 50 and second.skipped_files == 1 and _accounted(second)


def _cli(home: Path, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ctxvec.cli", *args],
                            env=cli_env(home), **{"cwd": REPO, **popen})


def test_symlink_loop_given_as_source_is_a_user_error(tmp_path):
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    proc = _cli(tmp_path / "home", "ingest", "a", cwd=tmp_path, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
    proc.wait(timeout=300)
    err = proc.stderr.read()
    assert proc.returncode == 2, err[-2000:]
    assert "symlink loop" in err, err[-2000:]


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(d.name))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _poll(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_die_with_a_killed_ingest(tmp_path):
    """SIGKILL a real `ctxvec ingest` (the parent alone, as the OOM killer would) while its
    workers read: no process it started survives it."""
    src = tmp_path / "src"
    src.mkdir()
    filler = corrupt.words("kill", 40)
    for i in range(4):  # minutes of work: the kill comes long before the end
        (src / f"f{i}.jsonl").write_bytes(corrupt.jsonl(
            [f"file {i} record {j} {filler}" for j in range(50_000)]))
    home = tmp_path / "home"
    proc = _cli(home, "ingest", str(src), "--set", "ingest.workers=2",
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    kids: set[int] = set()
    try:
        _poll(lambda: proc.poll() is not None
              or any(home.glob("snapshots/.tmp-*/.parts/part-*.parquet")), 240,
              "a worker to start reading")
        assert proc.poll() is None, f"ingest ended (exit {proc.returncode}) before the kill"
        kids = _descendants(proc.pid)
        assert len(kids) >= 2, kids
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        _poll(lambda: not any(_alive(k) for k in kids), 60,
              f"the workers {sorted(k for k in kids if _alive(k))} to exit")
    finally:
        for pid in [proc.pid, *kids]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
