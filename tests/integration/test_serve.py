"""The HTTP API over a workspace built by the tiny pipeline: every endpoint, the contract with
``ctxvec query``, bad input (a 4xx JSON error, and the server keeps serving), the API key, and
a champion hot swap under continuous load with no dropped request."""

from __future__ import annotations

import functools
import json
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from ctxvec.config import load_config
from ctxvec.ingest.corpus import iter_corpus
from ctxvec.refs import ModelRef
from ctxvec.workspace import Workspace
from tests.integration.conftest import TINY, TINY_OVERRIDES, ctxvec_cli, uvicorn_in_thread

NAME = "ctxvec-encoder"


def tiny_cfg(*overrides: str):
    return load_config(TINY, [*TINY_OVERRIDES, *overrides])


@pytest.fixture(scope="module")
def ws(served_workspace) -> Workspace:
    return Workspace(served_workspace.home)


@pytest.fixture(scope="module")
def docs(served_workspace) -> list[dict]:
    corpus = served_workspace.summary["snapshot"]["corpus"]
    return [r for b in iter_corpus(corpus) for r in b.to_pylist()]


@pytest.fixture(scope="module")
def long_doc(docs) -> dict:
    return max(docs[:40], key=lambda d: len(d["text"]))  # long and distinctive


@pytest.fixture(scope="module")
def client(ws):
    from ctxvec.serve.app import create_app

    with TestClient(create_app(ws, tiny_cfg()), raise_server_exceptions=False) as c:
        yield c


def ok(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, resp.text
    return resp.json()


def search(client, **body) -> dict:
    return ok(client.post("/search", json=body))


# --- every endpoint -------------------------------------------------------------------------


def test_health(client, served_workspace):
    h = ok(client.get("/health"))
    assert h["status"] == "ok" and h["model_version"] == "1"
    assert h["ref"] == f"models:/{NAME}@champion"
    assert h["index_count"] == served_workspace.summary["index"]["count"]
    assert h["dim"] == 32 and h["uptime_s"] >= 0


def test_openapi_schema_lists_every_route(client):
    schema = ok(client.get("/openapi.json"))
    assert {"/search", "/embed", "/senses", "/explain", "/health", "/models"} <= set(
        schema["paths"])
    assert "post" in schema["paths"]["/search"]
    body = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert {"text", "id", "vector", "k", "filters", "hybrid"} <= set(body)
    assert "ErrorResponse" in schema["components"]["schemas"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="search-form"' in page.text


def test_search_returns_the_same_hits_as_ctxvec_query(client, served_workspace, long_doc):
    text = long_doc["text"][:300]
    res = search(client, text=text, k=5)
    cli = json.loads(ctxvec_cli(served_workspace.home, "query", text, "-k", "5", "--json").stdout)
    assert res["model_version"] == "1" and res["took_ms"] > 0
    assert [h["doc_id"] for h in res["hits"]] == [h["doc_id"] for h in cli["hits"]]
    assert np.allclose([h["score"] for h in res["hits"]], [h["score"] for h in cli["hits"]],
                       atol=1e-5)
    for ours, theirs in zip(res["hits"], cli["hits"], strict=True):
        assert ours["text"] == theirs["text"] and ours["title"] == theirs["title"]
        assert (ours["start"], ours["end"]) == (theirs["start"], theirs["end"])
    assert res["hits"][0]["doc_id"] == long_doc["doc_id"]  # its own text comes first
    scores = [h["score"] for h in res["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_search_by_vector_and_by_id(client, long_doc):
    text = long_doc["text"][:300]
    by_text = search(client, text=text, k=5)
    emb = ok(client.post("/embed", json={"texts": [text]}))
    by_vec = search(client, vector=emb["vectors"][0], k=5)
    assert [h["doc_id"] for h in by_vec["hits"]] == [h["doc_id"] for h in by_text["hits"]]
    by_id = search(client, id=long_doc["doc_id"], k=5)
    assert len(by_id["hits"]) == 5
    assert long_doc["doc_id"] not in [h["doc_id"] for h in by_id["hits"][1:]]


def test_search_filters_and_hybrid(client, long_doc):
    text = long_doc["text"][:300]
    title = search(client, text=text, k=1)["hits"][0]["title"]
    assert title
    res = search(client, text=text, k=5, filters={"title": title})
    assert res["hits"] and all(h["title"] == title for h in res["hits"])
    assert res["hits"][0]["doc_id"] == long_doc["doc_id"]
    hybrid = search(client, text=text, k=5, hybrid=True)
    assert len(hybrid["hits"]) == 5 and hybrid["hits"][0]["doc_id"] == long_doc["doc_id"]


def test_embed(client, ws):
    texts = ["a football club in England", "the river runs to the sea", "I saw a saw."]
    res = ok(client.post("/embed", json={"texts": texts}))
    vecs = np.asarray(res["vectors"])
    assert vecs.shape == (3, 32) and res["dim"] == 32 and res["model_version"] == "1"
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    from ctxvec.serve.search import Searcher

    direct = Searcher(ws, f"models:/{NAME}/1").embed(texts)
    assert np.allclose(vecs, direct, atol=1e-5)  # batched as one request or not: same vectors


def test_serving_a_version_reads_the_registry_once(ws, registry_reads):
    """The watcher resolves the alias (one read) and hands the version to ``load_served``,
    whose searcher and sense searcher take it as it is; the download is in the workspace cache
    (versions never change), so it asks nothing either."""
    from ctxvec.registry import ModelVersion, Registry
    from ctxvec.serve.champion import ChampionWatcher, load_served
    from ctxvec.serve.search import Searcher

    registry = Registry(ws)
    registry.local_dir(ModelRef.registered(NAME, version=1))  # served before: in the cache
    cfg = tiny_cfg()
    registry_reads.clear()
    watcher = ChampionWatcher(ws, ModelRef.registered(NAME, alias="champion"), 60,
                              loader=functools.partial(load_served, cfg=cfg, registry=registry),
                              registry=registry)
    assert registry_reads == ["get_model_version_by_alias"]
    served = watcher.current
    assert served.version == "1" and served.senses is not None
    assert served.searcher.model_version is served.info
    assert served.searcher.ref == f"models:/{NAME}/1"
    registry_reads.clear()
    assert load_served(ws, served.info, cfg, registry=registry).version == "1"
    assert registry_reads == []  # a version already resolved: no read at all
    searcher = Searcher(ws, f"models:/{NAME}@champion", cfg)  # on its own: one read
    assert registry_reads == ["get_model_version_by_alias"]
    assert isinstance(searcher.model_version, ModelVersion) and searcher.version == "1"
    assert searcher.ref == f"models:/{NAME}@champion"


def test_senses_finds_the_sentence_itself(client, docs):
    # A word of a corpus sentence, asked in that very sentence, finds that occurrence first.
    for doc in docs:
        sentence = doc["text"].split(". ")[0][:300]
        words = [w for w in sentence.split() if w.isalpha() and len(w) >= 6]
        if words:
            break
    word = words[0]
    res = client.post("/senses", json={"word": word, "context": sentence, "k": 5})
    if res.status_code == 404 and "not available" in res.json()["error"]["message"]:
        pytest.fail(f"no sense index for the tiny pipeline: {res.json()}")
    body = ok(res)
    assert body["hits"] and body["model_version"] == "1"
    top = body["hits"][0]
    assert top["doc_id"] == doc["doc_id"] and top["score"] > 0.99
    at = top["start"] - top["snippet_start"]
    assert top["text"][at : at + len(word)].lower() == word.lower()


def test_explain(client):
    res = ok(client.post("/explain", json={"text": "I saw a saw.", "layer": -1}))
    n = len(res["tokens"])
    assert res["tokens"][0] == "[CLS]" and n >= 4
    w = np.asarray(res["weights"])
    assert w.shape == (n, n) and np.allclose(w.sum(axis=1), 1.0, atol=1e-3)
    assert res["head"] == "mean" and res["layer"] == 1  # the last of 2 layers
    head0 = ok(client.post("/explain", json={"text": "I saw a saw.", "layer": 0, "head": 0}))
    assert head0["head"] == 0 and head0["weights"] != res["weights"]


def test_models(client):
    res = ok(client.get("/models"))
    assert res["name"] == NAME and res["serving"] == "1"
    v1 = next(v for v in res["versions"] if v["version"] == "1")
    assert "champion" in v1["aliases"] and v1["has_index"] and v1["serving"]
    assert v1["tags"]["dim"] == "32"


# --- bad input: a 4xx JSON error, and the next request still works --------------------------

HUGE = "word " * 5000  # 25 000 characters > serve.max_text_chars (20 000)


@pytest.mark.parametrize(
    "path, body, status, err_type, message",
    [
        ("/search", {"text": "", "k": 5}, 422, "validation_error", "text is empty"),
        ("/search", {"text": "   \n", "k": 5}, 422, "validation_error", "text is empty"),
        ("/search", {"text": HUGE, "k": 5}, 413, "payload_too_large", "serve.max_text_chars"),
        ("/search", {"vector": [0.1, 0.2, 0.3], "k": 5}, 400, "bad_request", "has 32"),
        ("/search", {"vector": [], "k": 5}, 400, "bad_request", "has 32"),
        ("/search", {"id": "no-such-doc", "k": 5}, 404, "not_found",
         "no-such-doc"),
        ("/search", {"text": "hello", "k": 0}, 422, "validation_error", "k"),
        ("/search", {"text": "hello", "k": -3}, 422, "validation_error", "k"),
        ("/search", {"text": "hello", "k": 1001}, 422, "validation_error", "serve.max_k"),
        ("/search", {"text": "hello", "k": 10**12}, 422, "validation_error", "k"),
        ("/search", {"text": "hello", "k": "five"}, 422, "validation_error", "k"),
        ("/search", {"k": 5}, 422, "validation_error", "exactly one of text, id or vector"),
        ("/search", {"text": "a", "id": "b"}, 422, "validation_error", "exactly one"),
        ("/search", {"text": "hello", "kk": 5}, 422, "validation_error", "kk"),
        ("/search", {"id": "x", "hybrid": True}, 422, "validation_error", "hybrid"),
        ("/search", [1, 2], 422, "validation_error", "body"),
        ("/embed", {"texts": []}, 422, "validation_error", "texts"),
        ("/embed", {"texts": ["ok", ""]}, 422, "validation_error", "texts[1] is empty"),
        ("/embed", {"texts": ["x"] * 65}, 413, "payload_too_large", "serve.max_batch"),
        ("/embed", {"texts": [HUGE]}, 413, "payload_too_large", "texts[0]"),
        ("/senses", {"word": "", "context": "x"}, 422, "validation_error", "word"),
        ("/senses", {"word": "zzyzxq", "context": "the zzyzxq went by"}, 404, "not_found",
         "zzyzxq"),
        ("/explain", {"text": "I saw a saw.", "layer": 7}, 400, "bad_request", "layer 7"),
        ("/explain", {"text": "I saw a saw.", "head": 9}, 400, "bad_request", "head 9"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(client, path, body, status,
                                                                 err_type, message):
    resp = client.post(path, json=body)
    statuses = status if isinstance(status, tuple) else (status,)
    types = err_type if isinstance(err_type, tuple) else (err_type,)
    assert resp.status_code in statuses, resp.text
    err = resp.json()["error"]
    assert err["type"] in types and message in err["message"], err
    assert len(resp.content) < 10_000  # never echoes a huge input back
    assert search(client, text="a football club", k=3)["hits"]


@pytest.mark.parametrize(
    "raw, headers, status, err_type",
    [
        (b'{"text": "hello", "k": 5', {"content-type": "application/json"}, 400,
         "malformed_json"),
        (b"not json at all", {"content-type": "application/json"}, 400, "malformed_json"),
        (b'{"text": "caf\xff"}', {"content-type": "application/json"}, 400, "malformed_json"),
        (b'{"text": "hello"}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        (b'{"text": "hello"}', {}, 415, "unsupported_media_type"),
        (b"x" * (9 << 20), {"content-type": "application/json"}, 413, "payload_too_large"),
    ],
)
def test_malformed_bodies(client, raw, headers, status, err_type):
    resp = client.post("/search", content=raw, headers=headers)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["type"] == err_type
    assert search(client, text="a football club", k=3)["hits"]


def test_unknown_routes_and_methods_are_json_errors(client):
    resp = client.get("/nope")
    assert resp.status_code == 404 and "GET /nope" in resp.json()["error"]["message"]
    resp = client.get("/search")
    assert resp.status_code == 405 and resp.json()["error"]["type"] == "method_not_allowed"


def test_an_internal_error_is_a_logged_json_500_and_serving_goes_on(client, caplog,
                                                                    monkeypatch):
    searcher = client.app.state.watcher.current.searcher

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(searcher, "search_id", broken)
    with caplog.at_level("ERROR", logger="ctxvec.serve.app"):
        resp = client.post("/search", json={"id": "anything", "k": 3})
    assert resp.status_code == 500
    assert resp.json()["error"]["type"] == "internal_error"
    assert "disk on fire" not in resp.text  # the cause goes to the log, not to the caller
    assert any("disk on fire" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    monkeypatch.undo()
    assert search(client, text="a football club", k=3)["hits"]


# --- API key --------------------------------------------------------------------------------


def test_api_key(ws, monkeypatch):
    from ctxvec.serve.app import create_app

    monkeypatch.setenv("CTXVEC_API_KEY", "s3cret")  # serve.api_key_env
    with TestClient(create_app(ws, tiny_cfg())) as c:
        assert c.get("/health").status_code == 200  # open: health checks and the page
        assert c.get("/").status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}):
            resp = c.post("/search", json={"text": "a club", "k": 3}, headers=headers)
            assert resp.status_code == 401 and resp.json()["error"]["type"] == "unauthorized"
            assert c.get("/models", headers=headers).status_code == 401
            assert c.get("/openapi.json", headers=headers).status_code == 401
        good = {"X-API-Key": "s3cret"}
        assert c.post("/search", json={"text": "a club", "k": 3}, headers=good).status_code == 200
        schema = c.get("/openapi.json", headers=good).json()
        assert schema["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
        assert schema["paths"]["/search"]["post"]["security"] == [{"ApiKey": []}]
    monkeypatch.delenv("CTXVEC_API_KEY")
    with TestClient(create_app(ws, tiny_cfg())) as c:  # no key configured: open
        assert c.post("/search", json={"text": "a club", "k": 3}).status_code == 200
    with TestClient(create_app(ws, tiny_cfg(), api_key="given")) as c:  # --api-key
        assert c.post("/search", json={"text": "a club", "k": 3}).status_code == 401
        resp = c.post("/search", json={"text": "a club", "k": 3}, headers={"X-API-Key": "given"})
        assert resp.status_code == 200


def test_cli_serve_warns_when_binding_beyond_loopback_without_a_key(served_workspace):
    from ctxvec.cli.serve import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.4")
    proc = ctxvec_cli(served_workspace.home, "serve", "--help")
    assert "--api-key" in proc.stdout and "--port" in proc.stdout


# --- champion hot swap ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_version(served_workspace, ws) -> str:
    """Version 2: the same trained weights registered again, embedded and indexed on its own
    (as `ctxvec embed --model models:/ctxvec-encoder/2 --index` does), not yet champion."""
    from ctxvec.artifacts import EvalReport, Snapshot, TokenizerArtifact, TrainedModel
    from ctxvec.embed.corpus import run_embed
    from ctxvec.index.build import run_index
    from ctxvec.registry import Registry

    s = served_workspace.summary
    cfg = tiny_cfg()
    snap = Snapshot(**s["snapshot"])
    trained = TrainedModel(**s["train"])
    registry = Registry(ws)
    reg = registry.register(cfg, snap, TokenizerArtifact(**s["tokenizer"]), trained,
                            EvalReport(**s["evaluate"]))
    emb = run_embed(cfg, ws, snap, trained.model_dir, reg.version)
    registry.attach_index(reg.name, reg.version, run_index(cfg, ws, emb))
    assert registry.resolve(ModelRef.registered(NAME, alias="champion")).version == "1"
    return reg.version


def test_hot_swap_under_load_drops_no_request(ws, second_version, long_doc):
    from ctxvec.registry import Registry
    from ctxvec.serve.app import create_app

    app = create_app(ws, tiny_cfg("serve.reload_seconds=0.2"))
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]
    failures: list[str] = []
    stop = threading.Event()
    swapped_at: list[float] = []

    def fire(url: str, slot: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            i = 0
            while not stop.is_set():
                text = f"{long_doc['text'][:120]} {slot} {i}"
                try:
                    r = http.post("/search", json={"text": text, "k": 3})
                    body = r.json()
                    seen[slot].append((r.status_code, body.get("model_version", "")))
                    if r.status_code != 200 or len(body["hits"]) != 3:
                        failures.append(r.text)
                except Exception as e:  # a dropped connection counts as a failure
                    failures.append(repr(e))
                i += 1

    try:
        with uvicorn_in_thread(app) as url:
            threads = [threading.Thread(target=fire, args=(url, n)) for n in range(4)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            Registry(ws).promote(NAME, second_version)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if all(s and s[-1][1] == second_version for s in seen):
                    swapped_at.append(time.monotonic())
                    break
                time.sleep(0.05)
            time.sleep(1.0)  # and keep going on the new version for a while
            stop.set()
            for t in threads:
                t.join(30)
            health = httpx.get(f"{url}/health").json()
    finally:
        stop.set()
        Registry(ws).promote(NAME, "1")  # leave the champion as the other tests expect it
    assert not failures, failures[:3]
    assert swapped_at, "responses never switched to the new champion"
    assert health["model_version"] == second_version
    assert app.state.watcher.swaps == 1
    for per_client in seen:
        versions = [v for _, v in per_client]
        assert versions[0] == "1" and versions[-1] == second_version
        first_new = versions.index(second_version)
        assert set(versions[first_new:]) == {second_version}  # never back to the old one
    assert sum(len(s) for s in seen) > 20


def test_a_version_that_fails_to_load_keeps_the_old_one_serving(ws, second_version):
    from ctxvec.serve.champion import ChampionWatcher, load_served

    calls = []

    def flaky(w, info):  # the watcher hands over the version it resolved
        calls.append(info)
        if info.version == second_version:
            raise OSError("index file unreadable")
        return load_served(w, info)

    from ctxvec.registry import Registry

    watcher = ChampionWatcher(ws, f"models:/{NAME}@champion", 0.1, loader=flaky)
    try:
        Registry(ws).promote(NAME, second_version)
        assert watcher.poll() is False and watcher.current.version == "1"
        assert watcher.poll() is False and len(calls) == 2  # backing off: not retried at once
    finally:
        Registry(ws).promote(NAME, "1")
