"""The workspace on an object store (``ctxvec.storage``), against a real S3-compatible server
(moto, over HTTP): stage folders published with their manifest last, fetched into another
machine's empty cache, an interrupted publish never read, a re-publish replacing it, and clear
errors for a URI that names no usable store. A local workspace stays exactly as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctxvec.ingest.corpus import committed_snapshots
from ctxvec.storage import IncompleteStageError, StoreError
from ctxvec.workspace import Workspace, write_json
from tests.moto_s3 import list_keys, moto_server, new_bucket, s3_client, s3_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as url:
        yield url


@pytest.fixture
def s3(endpoint, monkeypatch):
    """The S3 environment set in this process; -> (endpoint, a fresh bucket)."""
    for k, v in s3_env(endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return endpoint, new_bucket(endpoint)


def machine(uri: str, cache: Path, monkeypatch) -> Workspace:
    """The workspace ``uri`` as a machine whose cache is ``cache`` sees it."""
    monkeypatch.setenv("CTXVEC_CACHE", str(cache))
    return Workspace.at(uri).ensure()


def write_stage(folder: Path, files: dict[str, bytes], **manifest) -> None:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    write_json(folder / "manifest.json", {"stage": "test", **manifest})


def read_tree(folder: Path) -> dict[str, bytes]:
    return {f.relative_to(folder).as_posix(): f.read_bytes()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_a_local_home_is_a_plain_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXVEC_HOME", str(tmp_path / "home"))
    ws = Workspace.from_env()
    assert ws == Workspace(tmp_path / "home") and ws.uri is None
    assert ws.home == str(tmp_path / "home")
    index = ws.indexes / "v1"
    # references stay the paths they were, and nothing is fetched
    assert ws.uri_for(index) == str(index)
    assert ws.local_dir(str(index)) == index
    assert ws.stage_manifest(index) is None
    with ws.ensure().stage_dir(index) as tmp:
        write_stage(tmp, {"a.bin": b"a"}, n=1)
    assert ws.stage_manifest(str(index))["n"] == 1
    with pytest.raises(StoreError, match="local folder"):
        ws.local_dir("s3://bucket/ws/indexes/v1")


def test_a_uri_home_works_in_a_cache_folder_per_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("CTXVEC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    a, b = Workspace.at("s3://bucket/ws/"), Workspace.at("s3://bucket/other")
    assert a.uri == "s3://bucket/ws" and a.home == "s3://bucket/ws"
    assert a.root.parent == (tmp_path / "xdg" / "ctxvec").resolve()
    assert a.root != b.root  # two stores never share a cache by default
    monkeypatch.setenv("CTXVEC_CACHE", str(tmp_path / "cache"))
    assert Workspace.at("s3://bucket/ws").root == (tmp_path / "cache").resolve()
    # the embedded MLflow keeps its database in the cache and its artifacts on the store
    assert a.mlflow_uri.startswith(f"sqlite:///{a.root}")
    assert a.mlflow_artifact_location == "s3://bucket/ws/mlartifacts"


def test_a_stage_folder_reaches_another_machine_through_the_store(s3, tmp_path, monkeypatch):
    endpoint, bucket = s3
    uri = f"s3://{bucket}/ws"
    one = machine(uri, tmp_path / "one", monkeypatch)
    files = {"index.faiss": os.urandom(3000), "senses/vectors.npy": b"v" * 10}
    with one.stage_dir(one.indexes / "v1") as tmp:
        write_stage(tmp, files, count=3)
    assert list_keys(endpoint, bucket) == [f"ws/indexes/v1/{k}" for k in
                                           ("index.faiss", "manifest.json", "senses/vectors.npy")]
    ref = one.uri_for(one.indexes / "v1")
    assert ref == f"{uri}/indexes/v1"
    assert one.uri_for(one.runs / "x") == str(one.runs / "x")  # runs stay local

    two = machine(uri, tmp_path / "two", monkeypatch)
    assert two.stage_manifest(ref)["count"] == 3  # read from the store: nothing fetched yet
    assert not (two.root / "indexes").exists()
    local = two.local_dir(ref)
    assert local == two.indexes / "v1"
    assert read_tree(local) == read_tree(one.indexes / "v1")
    assert two.local_dir(f"{ref}/senses") == local / "senses"
    # a path of the cache is a reference too (what manifests of this machine hold)
    assert two.local_dir(two.indexes / "v1") == local
    for bad in (f"s3://{bucket}/elsewhere/indexes/v1", f"{uri}/runs/x",
                f"{uri}/indexes/../../x", f"{uri}/indexes/.tmp-v1-0123"):
        with pytest.raises(StoreError, match="not in this workspace|no stage folder"):
            two.local_dir(bad)


def test_an_interrupted_publish_is_never_read_and_a_republish_replaces_it(
        s3, tmp_path, monkeypatch):
    endpoint, bucket = s3
    uri = f"s3://{bucket}/ws"
    one = machine(uri, tmp_path / "one", monkeypatch)
    with one.stage_dir(one.snapshots / "20260101T000000Z") as tmp:
        write_stage(tmp, {"docs-00000.parquet": b"A"}, version="A")
    ref = f"{uri}/snapshots/20260101T000000Z"
    two = machine(uri, tmp_path / "two", monkeypatch)
    assert read_tree(two.local_dir(ref))["docs-00000.parquet"] == b"A"  # two caches A

    # Version B is killed (as by a power cut) after its files, before its manifest.
    script = (
        "from ctxvec.workspace import Workspace, write_json\n"
        f"ws = Workspace.at({uri!r})\n"
        "with ws.stage_dir(ws.snapshots / '20260101T000000Z') as tmp:\n"
        "    (tmp / 'docs-00000.parquet').write_bytes(b'new')\n"
        "    (tmp / 'only-in-b.parquet').write_bytes(b'b')\n"
        "    write_json(tmp / 'manifest.json', {'version': 'B'})\n"
    )
    env = {**os.environ, "CTXVEC_CACHE": str(tmp_path / "crashed"),
           "CTXVEC_CRASH_AT": "publish-before-manifest"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    keys = list_keys(endpoint, bucket, "ws/snapshots/")
    assert "ws/snapshots/20260101T000000Z/only-in-b.parquet" in keys
    assert "ws/snapshots/20260101T000000Z/manifest.json" not in keys
    # the crashed machine's cache holds no snapshot that claims to be published
    assert not (tmp_path / "crashed" / "snapshots" / "20260101T000000Z").exists()

    # Readers: the folder does not exist for listings, and fetching it says why not, also on
    # a machine whose cache still holds version A.
    three = machine(uri, tmp_path / "three", monkeypatch)
    for ws in (two, three):
        assert committed_snapshots(ws) == []
        assert ws.stage_manifest(ref) is None
        with pytest.raises(IncompleteStageError, match=f"{ref} is incomplete.*interrupted"):
            ws.local_dir(ref)
    with pytest.raises(IncompleteStageError):
        two.local_dir(two.snapshots / "20260101T000000Z")

    # Re-publishing C replaces the folder: B's leftovers gone, every cache sees C.
    with one.stage_dir(one.snapshots / "20260101T000000Z") as tmp:
        write_stage(tmp, {"docs-00000.parquet": b"C"}, version="C")
    assert list_keys(endpoint, bucket, "ws/snapshots/") == [
        "ws/snapshots/20260101T000000Z/docs-00000.parquet",
        "ws/snapshots/20260101T000000Z/manifest.json"]
    for ws in (two, three):  # two's stale copy of A is replaced, three fetches afresh
        [snap] = committed_snapshots(ws)
        assert snap == ws.snapshots / "20260101T000000Z"
        assert read_tree(snap)["docs-00000.parquet"] == b"C"
        assert json.loads(read_tree(snap)["manifest.json"])["version"] == "C"


def test_listing_snapshots_keeps_the_complete_ones_in_order(s3, tmp_path, monkeypatch):
    endpoint, bucket = s3
    uri = f"s3://{bucket}/ws"
    one = machine(uri, tmp_path / "one", monkeypatch)
    for sid in ("20260102T000000Z", "20260101T000000Z"):
        with one.stage_dir(one.snapshots / sid) as tmp:
            write_stage(tmp, {"docs-00000.parquet": sid.encode()}, snapshot=sid)
    # what an interrupted publish of a third one leaves: files, no manifest
    s3_client(endpoint).put_object(Bucket=bucket, Key="ws/snapshots/20260103T000000Z/docs.parquet",
                                   Body=b"x")
    two = machine(uri, tmp_path / "two", monkeypatch)
    snaps = committed_snapshots(two)
    assert [p.name for p in snaps] == ["20260101T000000Z", "20260102T000000Z"]
    assert all(p.parent == two.snapshots and (p / "manifest.json").is_file() for p in snaps)


def test_a_file_uri_is_a_store_too(tmp_path, monkeypatch):
    store = tmp_path / "shared"
    one = machine(f"file://{store}", tmp_path / "one", monkeypatch)
    with one.stage_dir(one.embeddings / "v2") as tmp:
        write_stage(tmp, {"part-00000.parquet": b"e"}, rows=1)
    assert (store / "embeddings" / "v2" / "manifest.json").is_file()
    two = machine(f"file://{store}", tmp_path / "two", monkeypatch)
    assert read_tree(two.local_dir(f"file://{store}/embeddings/v2")) == read_tree(
        one.embeddings / "v2")


def test_a_uri_that_names_no_usable_store_fails_clearly_and_writes_nothing(
        s3, tmp_path, monkeypatch):
    endpoint, bucket = s3
    monkeypatch.setenv("CTXVEC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(StoreError, match="s3://no-such-bucket-x/ws: bucket 'no-such-bucket-x' "
                                         "does not exist"):
        Workspace.at("s3://no-such-bucket-x/ws").ensure()
    with pytest.raises(StoreError, match="unknown storage scheme 'nosuch'"):
        Workspace.at("nosuch://host/ws").ensure()
    with pytest.raises(StoreError, match="no bucket"):
        Workspace.at("s3:///ws")
    from tests.moto_s3 import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=f"s3://{bucket}/ws: cannot reach the object store"):
        Workspace.at(f"s3://{bucket}/ws").ensure()
    assert time.monotonic() - t0 < 15  # a few quick retries, not minutes
    assert not (tmp_path / "cache").exists()
