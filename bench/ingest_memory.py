"""Ingest memory at 1x, 2x and 4x the corpus: the on-disk de-duplication state against the in-memory
one it replaced, side by side.

The baseline is the ingest code of an earlier commit (default d5c2618, the last with the state in
memory), exported with ``git archive`` into a temporary folder and run with the same Python and
packages; the candidate is this tree. Inputs: the 64 Wikipedia shards, and 2x and 4x of them with
copies whose body lines are in other word orders (``bench/ingest.py``'s ``variant_input``).

Each ingest runs as a subprocess into a fresh workspace; the runs are interleaved (repeat, then
scale, then code, the order of the two codes alternating), so that load changes hit both. For
each it records the wall time, the peak RSS of the process tree (the main process and its workers,
summed, sampled every 50 ms from /proc), the ``ru_maxrss`` of the largest single process (from
``wait4``), the largest size of the state file on disk, and ``/proc/loadavg``. The first repeat
also checks that both codes kept and rejected the same documents.

    python bench/ingest_memory.py [--scales 1,2,4] [--repeats 3] [--workers 2] [--baseline REV]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from ingest import CORPUS, raw_mb, variant_input  # noqa: E402
from measure import PeakRSS, PeakSampler  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def export_baseline(rev: str, dst: Path) -> Path:
    """``src/`` of ``rev`` under ``dst`` -> a folder to put on PYTHONPATH."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dst, filter="data")
    return dst / "src"


def _largest_file(root: Path, pattern: str) -> int:
    """The size of the largest file matching ``pattern`` under ``root`` (0: none)."""
    sizes = [0]
    for f in root.glob(pattern):
        try:
            sizes.append(f.stat().st_size)
        except FileNotFoundError:
            pass
    return max(sizes)


def ingest(folder: Path, home: Path, pythonpath: str, workers: int) -> dict:
    env = {**os.environ, "CTXVEC_HOME": str(home), "PYTHONPATH": pythonpath}
    cmd = [sys.executable, "-m", "ctxvec.cli", "--log-level", "WARNING",
           "ingest", str(folder), "--json", "--set", f"ingest.workers={workers}"]
    load = Path("/proc/loadavg").read_text().split()[0]
    t0 = time.perf_counter()
    err = open(home.parent / f"{home.name}.err", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    with PeakRSS(proc.pid) as tree, PeakSampler(
            lambda: _largest_file(home / "snapshots", ".tmp-*/.parts/*.sqlite"), 0.5) as db:
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err.seek(0)
    tail = err.read()[-2000:]
    err.close()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{cmd} failed ({os.waitstatus_to_exitcode(status)}): {tail}")
    res = json.loads(out)
    return {"wall": wall, "tree_mib": tree.peak / 2**20, "maxrss_mib": usage.ru_maxrss / 1024,
            "db_mib": db.peak / 2**20, "load": load, "read": res["read"], "kept": res["kept"],
            "near": res["near_duplicates"], "dups": res["duplicates"],
            "snapshot": res["snapshot"]}


def decisions(home: Path, snapshot: str) -> tuple[list[str], list[tuple[str, str]]]:
    snap = home / "snapshots" / snapshot
    kept = [d for f in sorted(snap.glob("docs-*.parquet"))
            for d in pq.read_table(f, columns=["doc_id"]).column(0).to_pylist()]
    with open(snap / "rejected.jsonl", encoding="utf-8") as f:
        rejected = [(r["doc_id"], r["kind"]) for r in map(json.loads, f)]
    return kept, rejected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", default="d5c2618")
    args = ap.parse_args()
    scales = [int(s) for s in args.scales.split(",")]
    if not any(CORPUS.glob("*.gz")):
        raise SystemExit(f"no Wikipedia shards in {CORPUS}: set CTXVEC_SHARED_DATA")
    print(f"load at start: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        codes = {"memory": str(export_baseline(args.baseline, tmp / "baseline")),
                 "disk": str(REPO / "src")}
        inputs, mb = {}, {}
        for s in scales:
            inputs[s] = tmp / f"x{s}"
            inputs[s].mkdir()
            variant_input(inputs[s], s)
            mb[s] = raw_mb(inputs[s])
        runs: dict[tuple[int, str], list[dict]] = {}
        for r in range(args.repeats):
            for s in scales:
                order = ["memory", "disk"] if (r + s) % 2 else ["disk", "memory"]
                homes = {}
                for code in order:
                    homes[code] = tmp / f"home-{code}-{s}-{r}"
                    res = ingest(inputs[s], homes[code], codes[code], args.workers)
                    runs.setdefault((s, code), []).append(res)
                    print(f"repeat {r} {s}x {code:6s} {res['wall']:6.1f} s  tree "
                          f"{res['tree_mib']:6.0f} MiB  maxrss {res['maxrss_mib']:6.0f} MiB  "
                          f"state file {res['db_mib']:5.0f} MiB  kept {res['kept']}  "
                          f"near {res['near']}  load {res['load']}", flush=True)
                if r == 0:
                    same = (decisions(homes["memory"], runs[(s, "memory")][0]["snapshot"])
                            == decisions(homes["disk"], runs[(s, "disk")][0]["snapshot"]))
                    print(f"{s}x: same kept and rejected documents, in order: {same}")
                    if not same:
                        raise SystemExit("the two codes disagree")
                for h in homes.values():
                    subprocess.run(["rm", "-rf", str(h)], check=True)
        print(f"\nmedians of {args.repeats} (workers={args.workers}); load at end: "
              f"{Path('/proc/loadavg').read_text().strip()}")
        print("scale | MB | read | kept | code | wall s | docs/s | tree peak MiB | "
              "maxrss MiB | state file MiB")
        for s in scales:
            for code in ("memory", "disk"):
                rs = runs[(s, code)]
                wall = statistics.median(x["wall"] for x in rs)
                print(f"{s}x | {mb[s]:.1f} | {rs[0]['read']} | {rs[0]['kept']} | {code} | "
                      f"{wall:.1f} | {rs[0]['read'] / wall:.0f} | "
                      f"{max(x['tree_mib'] for x in rs):.0f} | "
                      f"{max(x['maxrss_mib'] for x in rs):.0f} | "
                      f"{max(x['db_mib'] for x in rs):.0f}")
            ratio = statistics.median(a["wall"] / b["wall"] for a, b in
                                      zip(runs[(s, "memory")], runs[(s, "disk")], strict=True))
            print(f"{s}x throughput disk/memory (median of per-repeat ratios): {ratio:.2f}")
        for code in ("memory", "disk"):
            peaks = [max(x["tree_mib"] for x in runs[(s, code)]) for s in scales]
            print(f"{code}: tree peak {scales[-1]}x / {scales[0]}x = {peaks[-1] / peaks[0]:.2f}")


if __name__ == "__main__":
    main()
