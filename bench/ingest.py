"""Ingest throughput and peak memory: `ctxvec ingest` against a hand-written reader, side by side.

Anchor: what a user would write without ctxvec: one process that gunzips each wikiextractor
shard, splits the <doc> records and writes them to Parquet, with no cleaning, no de-duplication
and no quarantine. ctxvec does all of that, with near-duplicate detection, in worker processes.

Both run as subprocesses, so the peak resident memory of each process tree is measured alone.
Inputs: all of shared/data/enwiki-wikiextractor (66 MB of text), then the same doubled (the 64
shards plus 64 copies whose lines are written backwards, new ids: new, distinct documents).

    python bench/ingest.py [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import SHARED_DATA, PeakRSS  # noqa: E402

CORPUS = SHARED_DATA / "enwiki-wikiextractor" / "AA"

ANCHOR = r'''
import gzip, re, sys
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
head = re.compile(r'^<doc id="([^"]*)" url="[^"]*" title="([^"]*)">$')
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
for f in sorted(Path(sys.argv[1]).glob("*.gz")):
    ids, titles, texts, cur = [], [], [], None
    with gzip.open(f, "rt", encoding="utf-8") as fh:
        for line in fh:
            m = head.match(line.rstrip("\n"))
            if m:
                cur = (m.group(1), m.group(2), [])
            elif line.startswith("</doc>") and cur:
                body = "\n".join(cur[2][1:]).strip()
                if body:
                    ids.append(cur[0]); titles.append(cur[1]); texts.append(body)
                cur = None
            elif cur is not None:
                cur[2].append(line.rstrip("\n"))
    pq.write_table(pa.table({"doc_id": ids, "title": titles, "text": texts}),
                   out / (f.stem + ".parquet"))
'''


def _swap_pairs(words: list[str]) -> list[str]:
    out = list(words)
    out[0:len(out) - 1:2], out[1::2] = words[1::2], words[0:len(words) - 1:2]
    return out


# word orders of the copies: each makes every 5-word shingle of a body line new
VARIANTS = (
    ("rev", lambda w: w[::-1]),
    ("swap", _swap_pairs),
    ("revswap", lambda w: _swap_pairs(w)[::-1]),
)


def variant_input(dst: Path, copies: int) -> None:
    """The 64 shards, plus ``copies - 1`` copies of them with every body line but the title in
    another word order (reversed, adjacent words swapped, both) and ids shifted: as many new,
    distinct documents, stubs and empty bodies as the original has, a copy."""
    for f in sorted(CORPUS.glob("*.gz")):
        (dst / f.name).symlink_to(f)
        for k, (tag, order) in enumerate(VARIANTS[:copies - 1], start=1):
            with gzip.open(f, "rt", encoding="utf-8") as src, \
                    gzip.open(dst / f"{tag}_{f.name}", "wt", encoding="utf-8",
                              compresslevel=1) as out:
                after_head = False
                for line in src:
                    if line.startswith("<doc id=\""):
                        doc_id = line.split('"')[1]
                        line = line.replace(f'id="{doc_id}"', f'id="{int(doc_id) + k * 10**9}"',
                                            1)
                        after_head = True
                    elif after_head:  # the title line stays: a stub must stay a stub
                        after_head = False
                    elif not line.startswith("</doc>"):
                        line = " ".join(order(line.split())) + "\n"
                    out.write(line)


def doubled_input(dst: Path) -> None:
    """The 64 shards, plus 64 with every body line but the title reversed word by word."""
    variant_input(dst, 2)


def raw_mb(folder: Path) -> float:
    total = 0
    for f in folder.glob("*.gz"):
        with gzip.open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    return total / 1e6


def run(cmd: list[str], env: dict) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    with PeakRSS(proc.pid) as peak:
        out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{cmd} failed with {proc.returncode}")
    return time.perf_counter() - t0, peak.peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        double = tmp / "double"
        double.mkdir()
        doubled_input(double)
        rows = []
        for label, folder in (("corpus", CORPUS), ("doubled", double)):
            mb = raw_mb(folder)
            results = {"ctxvec": [], "anchor": []}
            kept = None
            for r in range(args.repeats):
                home = tmp / f"home-{label}-{r}"
                env = {**os.environ, "CTXVEC_HOME": str(home)}
                t, rss, out = run([sys.executable, "-m", "ctxvec.cli", "--log-level", "WARNING",
                                   "ingest", str(folder), "--json",
                                   "--set", f"ingest.workers={args.workers}"], env)
                kept = json.loads(out)["kept"]
                results["ctxvec"].append((t, rss))
                t, rss, _ = run([sys.executable, "-c", ANCHOR, str(folder),
                                 str(tmp / f"anchor-{label}-{r}")], env)
                results["anchor"].append((t, rss))
            med = {k: statistics.median(x[0] for x in v) for k, v in results.items()}
            peak = {k: max(x[1] for x in v) / 2**20 for k, v in results.items()}
            rows.append((label, mb, kept, med, peak))
            print(f"{label}: {mb:.1f} MB of text, ctxvec kept {kept} documents", flush=True)
            for k in ("ctxvec", "anchor"):
                times = ", ".join(f"{x[0]:.1f}" for x in results[k])
                print(f"  {k:7s} median {med[k]:6.2f} s = {mb / med[k]:5.2f} MB/s, "
                      f"peak RSS {peak[k]:6.0f} MiB   (runs: {times} s)", flush=True)
            print(f"  throughput ratio ctxvec/anchor: {med['anchor'] / med['ctxvec']:.2f}")
        (_, _, _, _, p1), (_, _, _, _, p2) = rows
        print(f"peak RSS, doubled vs corpus: ctxvec {p2['ctxvec'] / p1['ctxvec']:.2f}x, "
              f"anchor {p2['anchor'] / p1['anchor']:.2f}x")


if __name__ == "__main__":
    main()
