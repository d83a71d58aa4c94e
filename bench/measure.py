"""Measuring helpers shared by the benchmarks: medians of repeated timings, the peak resident
memory of a whole process tree (the process and its workers), sampled from /proc, and the load
average printed beside every figure."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

SHARED_DATA = Path(os.environ.get("CTXVEC_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))


def loadavg() -> str:
    """The 1, 5 and 15-minute load averages, as ``/proc/loadavg`` gives them ("n/a" without it):
    on a shared machine a ratio holds only beside the load it was measured under."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _tree_rss_bytes(root: int) -> int:
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{pid}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


class PeakSampler:
    """``with PeakSampler(sample, every) as p: ...`` then ``p.peak``: the largest value
    ``sample()`` returned, polled every ``every`` seconds on a thread and once more at exit."""

    def __init__(self, sample: Callable[[], int], every: float = 0.05):
        self.sample, self.every, self.peak = sample, every, 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.every)

    def __enter__(self) -> PeakSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


class PeakRSS(PeakSampler):
    """``with PeakRSS() as p: ...`` then ``p.peak`` (bytes): max over samples of the tree's sum."""

    def __init__(self, pid: int | None = None, every: float = 0.05):
        self.pid = pid or os.getpid()
        super().__init__(lambda: _tree_rss_bytes(self.pid), every)


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times
