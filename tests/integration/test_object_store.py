"""The workspace on an S3-compatible object store, end to end, as users run it: ``ctxvec run``
with ``CTXVEC_HOME=s3://bucket/ws`` against a real S3 server (moto, over HTTP), then a second
machine (an empty cache, the same MLflow registry, nothing else of the first machine's files)
answers the same queries from what the store holds. And a store that cannot be reached is a
clear error (exit 2), with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.moto_s3 import free_port, list_keys, moto_server, new_bucket, s3_client, s3_env

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
# the tiny recipe, smaller still: what is tested is where things are stored, not the model
SETS = [a for o in ("evaluate.sts=null", "index.factory=Flat", "ingest.max_docs=40",
                    "train.steps=2", "embed.words.sample_docs=20") for a in ("--set", o)]
SENSE = ["--word", "club", "--context", "a football club in England", "-k", "3"]


def machine_env(**extra: str) -> dict[str, str]:
    """This environment without any MLflow, Prefect, AWS or workspace setting, plus ``extra``:
    each machine sees only what the test gives it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))
           and k not in ("CTXVEC_HOME", "CTXVEC_CACHE", "CTXVEC_CRASH_AT")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.update(extra)
    return env


def ctxvec(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxvec.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def ok(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def ranked(hits: list[dict]) -> list[tuple[str, float]]:
    return [(h["doc_id"], round(h["score"], 4)) for h in hits]


@pytest.mark.slow  # ~40-50 s on 2 CPU cores; .ci/run runs it
def test_a_pipeline_on_s3_is_served_by_another_machine_with_an_empty_cache(tmp_path,
                                                                          prefect_api):
    with moto_server() as endpoint:
        bucket = new_bucket(endpoint)
        uri = f"s3://{bucket}/ws"
        # the pipeline's flow reports to the session's Prefect server, as to a shared one
        one = machine_env(**s3_env(endpoint), CTXVEC_HOME=uri, PREFECT_API_URL=prefect_api,
                          CTXVEC_CACHE=str(tmp_path / "one"))
        s = ok(ctxvec(one, "run", "--config", TINY, *SETS, "--json"))
        assert s["workspace"] == uri

        # Every published stage folder is on the store, manifest included (written last).
        keys = set(list_keys(endpoint, bucket, "ws/"))
        tok = Path(s["tokenizer"]["path"]).name
        for folder in (f"snapshots/{s['snapshot']['snapshot_id']}", f"tokenizers/{tok}",
                       "embeddings/v1", "indexes/v1", "indexes/v1/senses"):
            assert f"ws/{folder}/manifest.json" in keys, folder
        local_index = tmp_path / "one" / "indexes" / "v1"
        for f in (p for p in local_index.rglob("*") if p.is_file()):
            key = f"ws/indexes/v1/{f.relative_to(local_index).as_posix()}"
            body = s3_client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
            assert body == f.read_bytes(), key
        # the index manifest names its inputs as the store does, for any machine to follow
        manifest = json.loads((local_index / "manifest.json").read_text())
        assert manifest["embeddings"] == f"{uri}/embeddings/v1"
        assert manifest["corpus"] == [f"{uri}/snapshots/{s['snapshot']['snapshot_id']}"]
        # the embedded MLflow put the registered weights on the store too
        assert any(k.startswith("ws/mlartifacts/") and k.endswith("model.safetensors")
                   for k in keys)

        # The second machine: the registry (moved out of the first machine's cache, which is
        # then deleted) and the store, nothing else.
        registry = tmp_path / "registry" / "mlflow.db"
        registry.parent.mkdir()
        shutil.move(tmp_path / "one" / "mlflow.db", registry)
        shutil.rmtree(tmp_path / "one")
        two = machine_env(**s3_env(endpoint), CTXVEC_HOME=uri,
                          CTXVEC_CACHE=str(tmp_path / "two"),
                          MLFLOW_TRACKING_URI=f"sqlite:///{registry}")
        shown = ok(ctxvec(two, "models", "show", "champion", "--json"))
        assert shown["index_uri"] == f"{uri}/indexes/v1"
        assert shown["index"]["count"] == s["index"]["count"]  # read from the store
        sample = s["sample_query"]
        hits = ok(ctxvec(two, "query", sample["text"], "-k", str(len(sample["hits"])),
                         "--json"))["hits"]
        assert sample["hits"] and ranked(hits) == ranked(sample["hits"])
        assert [h["text"] for h in hits] == [h["text"] for h in sample["hits"]]
        # sense search: the sense index and the corpus texts it quotes, fetched likewise
        senses = ok(ctxvec(two, "query", *SENSE, "--json"))["hits"]
        assert senses and all(
            h["text"][h["start"] - h["snippet_start"]:h["end"] - h["snippet_start"]].lower()
            == "club" for h in senses)
        # what it needed came from the store into its own cache
        cache = tmp_path / "two"
        assert (cache / "indexes" / "v1" / "manifest.json").is_file()
        assert (cache / "snapshots" / s["snapshot"]["snapshot_id"] / "manifest.json").is_file()
        assert not (cache / "embeddings").exists()  # serving does not need the embeddings


@pytest.mark.parametrize("problem", ["unreachable", "no-bucket"])
def test_a_store_that_cannot_be_used_is_a_clear_error_and_nothing_is_written(tmp_path, problem):
    uri = "s3://ctxvec-nowhere/ws"
    cache = tmp_path / "cache"
    if problem == "unreachable":
        env = machine_env(**s3_env(f"http://127.0.0.1:{free_port()}"), CTXVEC_HOME=uri,
                          CTXVEC_CACHE=str(cache))
        proc = ctxvec(env, "run", "--config", TINY, "--json")
        expected = f"{uri}: cannot reach the object store at http://127.0.0.1:"
    else:
        with moto_server() as endpoint:
            env = machine_env(**s3_env(endpoint), CTXVEC_HOME=uri, CTXVEC_CACHE=str(cache))
            proc = ctxvec(env, "query", "anything", "--json")
        expected = f"{uri}: bucket 'ctxvec-nowhere' does not exist"
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not cache.exists()
