"""The micro-batcher: concurrent jobs share encoder calls, each gets its own answer, an error stays
with its own job, jobs of two searchers (a hot swap) never mix, and closing drains the queue.

The searcher here is a small stand-in with the Searcher methods the batcher calls (``embed``,
``search_vectors``, ``search_vector``), so that the batching itself can be observed; the HTTP
tests run the batcher with the real Searcher."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ctxvec.serve.batcher import BatcherClosed, MicroBatcher


class CountingSearcher:
    def __init__(self, name: str = "a", delay: float = 0.02):
        self.name, self.delay = name, delay
        self.embed_calls: list[int] = []
        self.index_calls: list[int] = []

    def embed(self, texts):
        self.embed_calls.append(len(texts))
        time.sleep(self.delay)  # a forward pass: jobs queue meanwhile
        return np.asarray([[len(t), ord(t[0])] for t in texts], dtype=np.float32)

    def search_vectors(self, vecs, k, filters=None):
        self.index_calls.append(len(vecs))
        if any(v[0] == 13 for v in vecs):  # "a 13-char text" is a query the index refuses
            raise ValueError("bad query")
        return [self._hits(v, k, filters) for v in vecs]

    def search_vector(self, vec, k, filters=None):
        self.index_calls.append(1)
        if vec[0] == 13:
            raise ValueError("bad query")
        return self._hits(vec, k, filters)

    def _hits(self, v, k, filters):
        return [(self.name, int(v[0]), int(v[1]), k, dict(filters or {}))]


def run_concurrently(fns):
    results = [None] * len(fns)

    def call(i):
        try:
            results[i] = fns[i]()
        except Exception as e:  # kept, to be asserted on
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_concurrent_jobs_share_forward_passes_and_each_gets_its_own_answer():
    s = CountingSearcher()
    b = MicroBatcher(max_batch=64)
    texts = [f"{chr(97 + i % 26)}" * (i + 20) for i in range(40)]  # none of 13 chars
    results = run_concurrently([lambda t=t: b.search(s, t, 5).result(10) for t in texts])
    for t, hits in zip(texts, results, strict=True):
        assert hits == [("a", len(t), ord(t[0]), 5, {})]
    assert sum(s.embed_calls) == 40 and len(s.embed_calls) < 40  # batched
    assert b.stats.jobs == 40 and b.stats.largest > 1
    vec = b.embed(s, ["xy", "z"]).result(10)
    assert vec.tolist() == [[2, ord("x")], [1, ord("z")]]
    b.close()


def test_an_error_stays_with_its_own_job():
    s = CountingSearcher()
    b = MicroBatcher(max_batch=64)
    texts = ["x" * 13] + [f"ok {i}" for i in range(15)]
    results = run_concurrently([lambda t=t: b.search(s, t, 3).result(10) for t in texts])
    assert isinstance(results[0], ValueError)
    assert all(isinstance(r, list) and r[0][1] == len(t)
               for r, t in zip(results[1:], texts[1:], strict=True))
    b.close()


def test_jobs_of_two_searchers_and_of_different_k_or_filters_are_searched_apart():
    old, new = CountingSearcher("old"), CountingSearcher("new")
    b = MicroBatcher(max_batch=64)
    calls = [lambda i=i: b.search(old if i % 2 else new, f"q{i}", 1 + i % 3,
                                  {"title": "T"} if i % 4 == 0 else None).result(10)
             for i in range(24)]
    results = run_concurrently(calls)
    for i, hits in enumerate(results):
        name, _, _, k, filters = hits[0]
        assert name == ("old" if i % 2 else "new") and k == 1 + i % 3
        assert filters == ({"title": "T"} if i % 4 == 0 else {})
    b.close()


def test_vectors_are_searched_without_encoding():
    s = CountingSearcher()
    b = MicroBatcher()
    hits = b.search_vector(s, np.asarray([7.0, 65.0], dtype=np.float32), 2).result(10)
    assert hits == [("a", 7, 65, 2, {})] and s.embed_calls == []
    b.close()


def test_close_drains_the_queue_then_refuses_new_jobs():
    s = CountingSearcher(delay=0.05)
    b = MicroBatcher(max_batch=2)
    futures = [b.search(s, f"text {i}", 1) for i in range(6)]
    b.close()
    assert all(f.result(0)[0][1] == len(f"text {i}") for i, f in enumerate(futures))
    with pytest.raises(BatcherClosed):
        b.search(s, "late", 1)


def test_a_cancelled_job_is_skipped():
    s = CountingSearcher(delay=0.1)
    b = MicroBatcher(max_batch=1)
    first = b.search(s, "first", 1)
    second = b.search(s, "second", 1)
    assert second.cancel()  # its caller went away while the first was being encoded
    assert first.result(10)[0][1] == 5
    b.close()
    assert second.cancelled() and sum(s.embed_calls) == 1
