"""``GET /metrics`` over the tiny pipeline's workspace: request counts and latency by route
template and status, the micro-batcher's batch sizes, the served version, one registry per app,
the API key, and the route in ``/openapi.json``."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ctxvec.config import load_config
from ctxvec.workspace import Workspace
from tests.integration.conftest import TINY, TINY_OVERRIDES

NAME = "ctxvec-encoder"


@pytest.fixture(scope="module")
def ws(served_workspace) -> Workspace:
    return Workspace(served_workspace.home)


def app(ws: Workspace, **kwargs):
    from ctxvec.serve.app import create_app

    return create_app(ws, load_config(TINY, TINY_OVERRIDES), **kwargs)


def scrape(client: TestClient, **headers: str) -> dict[tuple[str, tuple], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_time_them_and_size_the_batches(ws):
    with TestClient(app(ws), raise_server_exceptions=False) as c:
        before = scrape(c)
        for text in ("a football club", "a river in Germany", "an old church"):
            assert c.post("/search", json={"text": text, "k": 3}).status_code == 200
        assert c.post("/embed", json={"texts": ["one", "two", "three", "four"]}
                      ).status_code == 200
        assert c.post("/search", json={"text": "x", "k": 0}).status_code == 422
        assert c.get("/no/such/page/42").status_code == 404
        after = scrape(c)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    search = {"method": "POST", "route": "/search"}
    assert moved("ctxvec_http_requests_total", status="200", **search) == 3
    assert moved("ctxvec_http_requests_total", status="422", **search) == 1
    assert moved("ctxvec_http_requests_total", method="POST", route="/embed", status="200") == 1
    # an unknown path is one label value, not one per path a client makes up
    assert moved("ctxvec_http_requests_total", method="GET", route="other", status="404") == 1
    assert moved("ctxvec_http_request_duration_seconds_count", **search) == 4
    assert moved("ctxvec_http_request_duration_seconds_sum", **search) > 0
    assert moved("ctxvec_http_request_duration_seconds_bucket", le="+Inf", **search) == 4
    # the scrape before this one was counted under its route template
    assert value(after, "ctxvec_http_requests_total", method="GET", route="/metrics",
                 status="200") >= 1
    # four jobs went through the micro-batcher (three searches, one embed of four texts):
    # however they were grouped, the batches hold four jobs and 3 + 4 texts
    assert moved("ctxvec_batch_requests_sum") == 4
    assert moved("ctxvec_batch_texts_sum") == 7
    assert 1 <= moved("ctxvec_batch_requests_count") <= 4
    assert moved("ctxvec_batch_encode_seconds_total") > 0
    # the served version, and the reference the server follows
    assert value(after, "ctxvec_served_model_info", model=NAME, version="1",
                 ref=f"models:/{NAME}@champion") == 1
    assert value(after, "ctxvec_served_model_loaded_timestamp_seconds") > 0


def test_each_app_has_a_registry_of_its_own(ws):
    """Two apps in one process (as the tests and a reload make): one's traffic is not the
    other's, and neither touches prometheus_client's global registry."""
    from prometheus_client import REGISTRY

    global_names = {m.name for m in REGISTRY.collect()}
    with TestClient(app(ws)) as first, TestClient(app(ws)) as second:
        for _ in range(2):
            assert first.get("/health").status_code == 200
        health = {"method": "GET", "route": "/health", "status": "200"}
        assert value(scrape(first), "ctxvec_http_requests_total", **health) == 2
        assert value(scrape(second), "ctxvec_http_requests_total", **health) == 0
    assert not any(n.startswith("ctxvec_") for n in {m.name for m in REGISTRY.collect()}
                   - global_names)


def test_metrics_need_the_api_key_and_refused_requests_are_counted(ws):
    with TestClient(app(ws, api_key="k3y")) as c:
        assert c.get("/metrics").status_code == 401
        assert c.post("/search", json={"text": "a club", "k": 3}).status_code == 401
        samples = scrape(c, **{"X-API-Key": "k3y"})
        assert value(samples, "ctxvec_http_requests_total", method="POST", route="/search",
                     status="401") == 1
        assert value(samples, "ctxvec_http_requests_total", method="GET", route="/metrics",
                     status="401") == 1


def test_metrics_are_in_the_openapi_schema_and_speak_openmetrics_when_asked(ws):
    with TestClient(app(ws)) as c:
        op = c.get("/openapi.json").json()["paths"]["/metrics"]["get"]
        assert op["tags"] == ["ops"]
        assert set(op["responses"]["200"]["content"]) == {"text/plain",
                                                          "application/openmetrics-text"}
        resp = c.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/openmetrics-text")
        assert resp.text.rstrip().endswith("# EOF")
