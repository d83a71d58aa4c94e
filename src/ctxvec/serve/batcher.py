"""A micro-batcher: concurrent queries share one encoder forward pass and one index search.

On a CPU, encoding one short query costs nearly as much as encoding eight (the forward pass is
dominated by per-call overhead and weight traffic), and an index call has a fixed cost too. So
requests do not run the encoder themselves: they put a job on a queue, and the batcher takes every
job waiting (up to ``max_batch`` texts), encodes all their texts in one call, searches with all
the vectors at once, and resolves each job's future. The event loop never runs torch; under load
the batch grows by itself, because jobs queue while the batcher is busy. When the previous batch
held more than one job, it also waits up to ``max_wait_s`` for stragglers (a lone client never
waits).

One thread does it all, batch after batch. (A two-thread pipeline, encoding batch n+1 while
searching for batch n, was measured and dropped: the encoder then takes jobs as soon as they come,
batches shrink, and under 8 to 32 clients throughput fell by a fifth.)

A job carries the searcher it started with, so a champion swap never changes the model under a
request in flight: jobs of two searchers in one batch are processed as two groups.

Between batches, at most every ``trim_every_s``, the worker hands the memory the encoder freed
back to the system (``memory.release_free_memory``): without it, batches of ever-different
shapes fragment malloc's heap and the server's memory grows under load.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ctxvec.serve.memory import TRIM_EVERY_S, release_free_memory

log = logging.getLogger(__name__)

_STOP = object()


class BatcherClosed(RuntimeError):
    """The server is shutting down: no new jobs are taken."""


@dataclass
class _Job:
    searcher: Any  # a ctxvec.serve.search.Searcher
    kind: Literal["search", "vector", "encode"]
    texts: Sequence[str] = ()
    vector: np.ndarray | None = None
    k: int = 10
    filters: Mapping | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    @property
    def size(self) -> int:
        return max(1, len(self.texts))

    def search_key(self) -> Hashable:
        """Jobs with equal keys can share one index call."""
        if not self.filters:
            return (self.k, None)
        return (self.k, tuple(sorted((key, v if isinstance(v, str) else tuple(v))
                                     for key, v in self.filters.items())))


@dataclass
class BatchStats:
    batches: int = 0
    jobs: int = 0
    texts: int = 0
    largest: int = 0
    encode_s: float = 0.0  # time the encode stage spent encoding
    search_s: float = 0.0  # time the search stage spent searching and reading documents
    trims: int = 0  # times freed memory was handed back to the system
    trim_s: float = 0.0  # time that took

    def to_dict(self) -> dict:
        mean = self.jobs / self.batches if self.batches else 0.0
        return {"batches": self.batches, "jobs": self.jobs, "texts": self.texts,
                "largest_batch": self.largest, "mean_batch": round(mean, 2),
                "encode_s": round(self.encode_s, 3), "search_s": round(self.search_s, 3),
                "trims": self.trims, "trim_s": round(self.trim_s, 3)}


class MicroBatcher:
    def __init__(self, max_batch: int = 64, max_wait_s: float = 0.0015,
                 trim_every_s: float | None = TRIM_EVERY_S,
                 on_batch: Callable[[int, int], None] | None = None,
                 thread_init: Callable[[], None] | None = None):
        """``on_batch(jobs, texts)`` is called from the worker thread for every batch it takes
        (the server's metrics: ``ctxvec.serve.metrics``); ``thread_init()`` once, when that
        thread starts (OpenMP keeps thread counts per thread: ``ctxvec.embed.threads``)."""
        assert max_batch >= 1
        self.on_batch = on_batch
        self.thread_init = thread_init
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.trim_every_s = trim_every_s  # None: never hand freed memory back
        self._trimmed_at = time.monotonic()
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._last_jobs = 1

    # --- the request side -----------------------------------------------------------------

    def search(self, searcher, text: str, k: int, filters: Mapping | None = None):
        """A future of ``list[Hit]`` for a text query."""
        return self._submit(_Job(searcher, "search", texts=(text,), k=k, filters=filters))

    def search_vector(self, searcher, vector: np.ndarray, k: int,
                      filters: Mapping | None = None):
        """A future of ``list[Hit]`` for a query vector (D,)."""
        return self._submit(_Job(searcher, "vector", vector=vector, k=k, filters=filters))

    def embed(self, searcher, texts: Sequence[str]):
        """A future of float32 (N, D) vectors."""
        return self._submit(_Job(searcher, "encode", texts=tuple(texts)))

    def _submit(self, job: _Job) -> concurrent.futures.Future:
        with self._lock:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            if self._thread is None:  # on first use: an app that never serves starts none
                self._thread = threading.Thread(target=self._run, name="ctxvec-batcher",
                                                daemon=True)
                self._thread.start()
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        """Finish the jobs already queued, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)

    # --- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        if self.thread_init is not None:
            try:
                self.thread_init()
            except Exception:  # a thread count not applied is no reason to stop serving
                log.exception("batcher: its thread set-up failed")
        stopping = False
        while not stopping:
            batch, stopping = self._collect()
            groups: dict[int, list[_Job]] = {}
            for job in batch:
                # A job whose caller has gone (cancelled) is dropped; the others can no longer
                # be cancelled, so setting their result below is safe.
                if job.future.set_running_or_notify_cancel():
                    groups.setdefault(id(job.searcher), []).append(job)
            for jobs in groups.values():
                try:
                    vecs = self._encode(jobs)
                    if vecs is not None:
                        t0 = time.perf_counter()
                        self._search_all(jobs, vecs)
                        self.stats.search_s += time.perf_counter() - t0
                except BaseException as e:  # never let the worker die with futures pending
                    log.exception("batcher: a batch failed")
                    _fail(jobs, e)
            self._trim()

    def _trim(self) -> None:
        """Hand freed memory back to the system if ``trim_every_s`` has passed since last time
        (between batches: the answers of this one are out)."""
        now = time.monotonic()
        if self.trim_every_s is None or now - self._trimmed_at < self.trim_every_s:
            return
        if release_free_memory():
            self.stats.trims += 1
        self._trimmed_at = time.monotonic()
        self.stats.trim_s += self._trimmed_at - now

    def _collect(self) -> tuple[list[_Job], bool]:
        """Block for one job, then take what else is queued (up to max_batch texts)."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch, texts = [first], first.size
        wait = self.max_wait_s if self._last_jobs > 1 else 0.0
        deadline = time.perf_counter() + wait
        while texts < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else \
                    self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self._drain_into(batch)
                return batch, True
            batch.append(job)
            texts += job.size
        self._last_jobs = len(batch)
        s = self.stats
        s.batches, s.jobs, s.texts = s.batches + 1, s.jobs + len(batch), s.texts + texts
        s.largest = max(s.largest, len(batch))
        if self.on_batch is not None:
            self.on_batch(len(batch), texts)
        return batch, False

    def _drain_into(self, batch: list[_Job]) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                batch.append(job)

    def _encode(self, jobs: list[_Job]) -> np.ndarray | None:
        """One encode call for every text of one searcher's jobs; ``/embed`` jobs are resolved
        here. -> the vectors for the search stage, or None when nothing is left to search."""
        searcher = jobs[0].searcher
        texts = [t for job in jobs for t in job.texts]
        vecs = np.empty((0, 0), dtype=np.float32)
        if texts:
            t0 = time.perf_counter()
            try:
                vecs = searcher.embed(texts)  # (N, D), one forward pass per encoder batch
            except Exception as e:
                _fail(jobs, e)
                return None
            finally:
                self.stats.encode_s += time.perf_counter() - t0
        row = 0
        for job in jobs:
            if job.kind == "encode":
                job.future.set_result(vecs[row : row + len(job.texts)])
            row += len(job.texts)
        return vecs if any(job.kind != "encode" for job in jobs) else None

    def _search_all(self, jobs: list[_Job], vecs: np.ndarray) -> None:
        """One index search per (k, filters) group of one searcher's jobs."""
        searcher = jobs[0].searcher
        pending: dict[Hashable, list[tuple[_Job, np.ndarray]]] = {}
        row = 0
        for job in jobs:
            if job.kind == "search":
                pending.setdefault(job.search_key(), []).append((job, vecs[row]))
            elif job.kind == "vector":
                pending.setdefault(job.search_key(), []).append((job, job.vector))
            row += len(job.texts)
        for group in pending.values():
            self._search(searcher, group)

    @staticmethod
    def _search(searcher, group: list[tuple[_Job, np.ndarray]]) -> None:
        """All queries of a group in one ``search_vectors`` call; if that fails, one at a
        time, so that an error stays with the query that caused it."""
        k, filters = group[0][0].k, group[0][0].filters
        try:
            results = searcher.search_vectors(np.stack([v for _, v in group]), k, filters)
        except Exception:
            results = None
        if results is not None:
            for (job, _), hits in zip(group, results, strict=True):
                job.future.set_result(hits)
            return
        for job, vec in group:
            try:
                job.future.set_result(searcher.search_vector(vec, k, filters))
            except Exception as e:
                job.future.set_exception(e)


def _fail(jobs: list[_Job], e: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(e)
