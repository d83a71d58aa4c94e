"""How many threads this process should compute with, and applying that count to torch and FAISS.

torch and FAISS each start one OpenMP thread per CPU they can see (``os.cpu_count()``-like), not
per CPU the process may actually use. A container limited by a cgroup CPU quota (Docker's
``--cpus 1.5``, a Kubernetes CPU limit) still sees every CPU of the host, so a 2-CPU quota on a
16-CPU host runs 16 threads in 2 CPUs' time: each forward pass waits for the threads the
scheduler parked. On a busy machine the same happens without any quota, because the other
processes take CPUs away mid-pass (docs/benchmarks.md, Threads under contention).

``embed.threads`` (``ctxvec embed``, the pipeline's embed stage) and ``serve.threads``
(``ctxvec serve``, ``ctxvec query`` searching here) name the count; null means what the process
may use: the CPUs of its affinity mask (``taskset``, cpusets), capped by the cgroup quota
(v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the lowest along the cgroup's
path) rounded down, at least 1; ``os.cpu_count()`` where neither is known.

OpenMP keeps its thread count per thread once a thread has computed: a thread that runs torch or
FAISS work of its own (the server's batcher) applies the count itself, at its start.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# where cgroup v1 mounts the cpu controller (alone, or joined with cpuacct)
_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True)
class Threads:
    """A thread count and where it came from (``2 (CPU affinity)``)."""

    count: int
    source: str

    def __str__(self) -> str:
        return f"{self.count} ({self.source})"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_paths(proc_cgroup: Path) -> tuple[str, str]:
    """(v2 path, v1 cpu controller path) of this process's cgroup, "/" where unknown.

    Lines read ``0::/path`` (v2) and ``N:cpu,cpuacct:/path`` (v1)."""
    v2 = v1 = "/"
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _lineage(base: Path, path: str) -> list[Path]:
    """``base/path`` and each folder above it up to ``base`` (a limit set on a parent applies
    to its children). In a container the cgroup's own folder is usually ``base`` itself."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_limit(folder: Path) -> float | None:
    """CPUs ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") allows in ``folder``; None: no limit."""
    text = _read(folder / "cpu.max")
    if not text:
        return None
    fields = text.split()
    if fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        log.warning("threads: cannot read %s (%r): the cgroup quota is ignored",
                    folder / "cpu.max", text)
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(folder: Path) -> float | None:
    """CPUs ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` allow in ``folder``; None: no limit
    (a quota of -1)."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        log.warning("threads: cannot read the CFS quota in %s (%r / %r): ignored",
                    folder, quota, period)
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs the cgroup CPU quota allows this process (1.5 for ``--cpus 1.5``), the lowest along
    its cgroup's path, v2 or v1; None where there is no quota or no cgroup file to read."""
    v2_path, v1_path = _cgroup_paths(proc_cgroup)
    limits = [_v2_limit(d) for d in _lineage(root, v2_path)]
    for name in _V1_CPU_DIRS:
        if (root / name).is_dir():
            limits += [_v1_limit(d) for d in _lineage(root / name, v1_path)]
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def affinity_cpus() -> int | None:
    """CPUs this process may be scheduled on (its affinity mask); None where the platform does
    not say (macOS, Windows)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return None
    try:
        return len(getaffinity(0)) or None
    except OSError:
        return None


def available_threads(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Threads:
    """What this process may use: its affinity CPUs, capped by the cgroup quota rounded down,
    at least 1; ``os.cpu_count()`` where neither is known."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is not None and (cpus is None or math.floor(quota) < cpus):
        return Threads(max(1, math.floor(quota)), f"cgroup quota {quota:g} CPUs")
    if cpus is not None:
        return Threads(cpus, "CPU affinity")
    return Threads(os.cpu_count() or 1, "os.cpu_count")


def resolve_threads(setting: int | None, key: str, root: Path = CGROUP_ROOT,
                    proc_cgroup: Path = PROC_CGROUP) -> Threads:
    """``setting`` (the value of config key ``key``) when given, else ``available_threads``."""
    if setting is not None:
        if setting < 1:
            raise ValueError(f"{key} must be at least 1, not {setting}")
        return Threads(int(setting), key)
    return available_threads(root, proc_cgroup)


def apply_threads(count: int) -> tuple[int, int | None]:
    """Compute with ``count`` threads in torch (intra-op; inter-op too while that can still be
    set) and, if this process has loaded FAISS, in FAISS's OpenMP. -> the previous (torch,
    FAISS) counts, for ``restore_threads``."""
    before = torch.get_num_threads(), _faiss_threads()
    torch.set_num_threads(count)
    try:  # only possible before any inter-op parallel work of this process
        torch.set_num_interop_threads(count)
    except RuntimeError:
        log.debug("threads: torch's inter-op threads were already set; left as they are")
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(count)
    return before


def restore_threads(before: tuple[int, int | None]) -> None:
    """Undo ``apply_threads`` (intra-op torch threads and FAISS's; inter-op ones stay)."""
    torch.set_num_threads(before[0])
    faiss = sys.modules.get("faiss")
    if faiss is not None and before[1] is not None:
        faiss.omp_set_num_threads(before[1])


def _faiss_threads() -> int | None:
    """FAISS's OpenMP thread count, or None when this process has not imported FAISS (FAISS is
    an extra, and importing it here only to set a count would cost the start-up it loads)."""
    faiss = sys.modules.get("faiss")
    return faiss.omp_get_max_threads() if faiss is not None else None


def use_threads(setting: int | None, key: str, what: str) -> Threads:
    """Resolve and apply the thread count for ``what`` (``embed``, ``serve``), logging the
    count and its source: ``embed: 2 threads (CPU affinity)``."""
    threads = resolve_threads(setting, key)
    if setting is not None and setting > (usable := available_threads()).count:
        log.warning("%s: %s=%d is more than the %s this process may use: its threads will "
                    "wait for each other", what, key, setting, usable)
    apply_threads(threads.count)
    log.info("%s: %d thread%s (%s); torch computes with %d", what, threads.count,
             "" if threads.count == 1 else "s", threads.source, torch.get_num_threads())
    return threads


@contextmanager
def threads_for(setting: int | None, key: str, what: str) -> Iterator[Threads]:
    """``use_threads`` for the duration of a library call (``run_embed``): the counts before
    it are restored after, so that a pipeline's later stages keep their own."""
    before = torch.get_num_threads(), _faiss_threads()
    threads = use_threads(setting, key, what)
    try:
        yield threads
    finally:
        restore_threads(before)
