"""HTTP load on `ctxvec serve`: latency (p50, p99), throughput and errors of `POST /search` at 1, 8
and 32 concurrent clients on a 100k-vector index, against the same queries without HTTP.

Index (built once under --home, then reused; said again in the output): all-MiniLM-L6-v2 (the
`minilm` weights) registered as version 1 of `ctxvec-encoder` with ctxvec's registry functions and
made champion; the corpus is the first Wikipedia articles of ../shared/data/enwiki-wikiextractor
(ingested by `run_ingest`, in shard order), as many as give --vectors chunk vectors: every article
cut into windows of at most 64 tokens (32 shared by consecutive windows), each embedded by
`run_embed` and indexed by `run_index` with `index.factory` (default `auto`, which is exact `Flat`
up to 100k vectors). Real vectors of real text: nothing is synthetic.

Queries: the unique sentences of STS-B dev (../shared/data/stsbenchmark/sts-dev.csv), then of
STS-B train, in file order; every request of the whole run has a text of its own (no query is
ever repeated, so no cache could help), k = 10.

Rows, per number of concurrent clients C, each a closed loop (a client sends its next request when
the previous answer is in) of --requests requests after --warmup unrecorded ones; the HTTP rows
are repeated --repeats times, levels interleaved, and the table shows the median of each figure
(the machine may be shared: the load average is printed before and after):
- http: `ctxvec serve` in a subprocess on 127.0.0.1; C asyncio clients, one keep-alive HTTP/1.1
  connection each, on raw sockets (the cheapest client we can write, so that the load generator,
  which shares the two cores with the server, takes as little of them as it can). An error is a
  non-200 answer, a broken connection, or an answer without k hits.
- in-process batched: the same queries through the server's micro-batcher (`MicroBatcher`) from
  C threads, no HTTP: what batching alone gives.
- direct: `Searcher.search(text, k)` from C threads in process, no HTTP and no batching: the
  anchor, what a caller of the library gets.

    python bench/http_load.py [--home DIR] [--vectors 100000] [--levels 1,8,32]
                              [--requests 600] [--repeats 3] [--factory auto] [--skip-anchor]
                              [--serve-set serve.max_batch=1] [--access-log] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from measure import SHARED_DATA  # noqa: E402

WIKI = SHARED_DATA / "enwiki-wikiextractor"
STS_DEV = SHARED_DATA / "stsbenchmark" / "sts-dev.csv"
STS_TRAIN = SHARED_DATA / "stsbenchmark" / "sts-train.csv"
DEFAULT_HOME = Path.home() / ".cache" / "ctxvec-bench" / "http-100k"
NAME = "ctxvec-encoder"
K = 10
MAX_TOKENS, STRIDE = 64, 32


# --- the workspace: minilm registered, a 100k-vector index attached -------------------------


def bench_config(factory: str, max_docs: int | None = None):
    from ctxvec.config import load_config

    shards = sorted(str(p) for p in WIKI.rglob("wiki_*.gz"))
    sets = [
        "ingest.sources=" + json.dumps(shards), "ingest.workers=1",
        f"embed.max_tokens={MAX_TOKENS}", f"embed.stride={STRIDE}", "embed.words.enabled=false",
        f"index.factory={factory}", "index.bm25=false", f"registry.model_name={NAME}",
    ]
    if max_docs:
        sets.append(f"ingest.max_docs={max_docs}")
    return load_config(None, sets)


def docs_for(n_vectors: int, factory: str) -> tuple[int, int]:
    """How many leading articles give n_vectors chunks: ingest everything into a scratch
    workspace, then count each article's windows with the tokenizer, as `run_embed` cuts them."""
    from ctxvec.ingest.corpus import iter_corpus
    from ctxvec.ingest.snapshot import run_ingest
    from ctxvec.model.encoder import load_tokenizer
    from ctxvec.model.refs import minilm_dir
    from ctxvec.workspace import Workspace

    tok = load_tokenizer(minilm_dir())
    with tempfile.TemporaryDirectory() as tmp:
        snap = run_ingest(bench_config(factory), Workspace(Path(tmp)).ensure())
        total = 0
        n_docs = 0
        for batch in iter_corpus(snap.corpus):
            texts = batch.column("text").to_pylist()
            enc = tok(texts, truncation=True, max_length=MAX_TOKENS, stride=STRIDE,
                      return_overflowing_tokens=True)
            per_doc = np.bincount(enc["overflow_to_sample_mapping"], minlength=len(texts))
            cum = total + np.cumsum(per_doc)
            if cum[-1] >= n_vectors:
                i = int(np.searchsorted(cum, n_vectors))
                return n_docs + i + 1, int(cum[i])
            total, n_docs = int(cum[-1]), n_docs + len(texts)
    raise SystemExit(f"the corpus has only {total} chunks, fewer than {n_vectors}")


def build_workspace(home: Path, n_vectors: int, factory: str) -> dict:
    """Register minilm, embed and index the first articles, attach the index, promote."""
    from ctxvec.artifacts import EvalReport, TrainedModel
    from ctxvec.embed.corpus import run_embed
    from ctxvec.index.build import run_index
    from ctxvec.ingest.snapshot import run_ingest
    from ctxvec.model.refs import minilm_dir
    from ctxvec.registry import Registry
    from ctxvec.workspace import Workspace

    t0 = time.perf_counter()
    n_docs, expected = docs_for(n_vectors, factory)
    print(f"build: the first {n_docs} articles give {expected} chunks", flush=True)
    cfg = bench_config(factory, n_docs)
    ws = Workspace(home).ensure()
    registry = Registry(ws)
    snap = run_ingest(cfg, ws)
    run_dir = home / "minilm-run"
    run_dir.mkdir(exist_ok=True)
    trained = TrainedModel(str(run_dir), str(minilm_dir()), steps=0, tokens_seen=0,
                           final_loss=None, eval_loss=None, parent="minilm")
    reg = registry.register(cfg, snap, None, trained,
                            EvalReport({}, {"all": "http benchmark: not evaluated"}))
    print(f"build: registered minilm as {reg.uri}; embedding {snap.corpus_docs} articles "
          "(minutes on 2 CPU cores)", flush=True)
    emb = run_embed(cfg, ws, snap, str(minilm_dir()), reg.version)
    idx = run_index(cfg, ws, emb)
    registry.attach_index(reg.name, reg.version, idx)
    registry.promote(reg.name, reg.version)
    info = {"version": reg.version, "docs": emb.docs, "vectors": idx.count, "dim": idx.dim,
            "factory": idx.factory, "recall_at_10": idx.recall_at_10, "index": idx.path,
            "build_seconds": round(time.perf_counter() - t0, 1)}
    (home / "bench.json").write_text(json.dumps(info, indent=2))
    return info


def workspace(home: Path, n_vectors: int, factory: str) -> dict:
    marker = home / "bench.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        print(f"reusing {home}: {info['vectors']} vectors, {info['factory']}", flush=True)
        return info
    if home.exists() and any(home.iterdir()):
        raise SystemExit(f"{home} holds something other than a finished benchmark workspace: "
                         "remove it or pick another --home")
    return build_workspace(home, n_vectors, factory)


# --- queries and statistics -----------------------------------------------------------------


def sts_sentences() -> list[str]:
    """The unique sentences of STS-B dev, then those of STS-B train (for longer runs)."""
    out = []
    for path in (STS_DEV, STS_TRAIN):
        with open(path, encoding="utf-8") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            out += [s for r in rows if len(r) >= 7 for s in (r[5], r[6])]
    return list(dict.fromkeys(s for s in out if s.strip()))


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)  # seconds
    errors: int = 0
    wall: float = 0.0
    notes: dict = field(default_factory=dict)

    def row(self) -> dict:
        lat = np.asarray(self.latencies) * 1000
        n = len(self.latencies) + self.errors
        return {
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "req_per_s": round(n / self.wall, 1) if self.wall else None,
            "errors": self.errors, "requests": n, **self.notes,
        }


def closed_loop_threads(clients: int, texts: list[str], call) -> Run:
    """C threads, each calling ``call(text)`` on its next text until the texts run out."""
    it = iter(texts)
    lock = threading.Lock()
    run = Run()

    def worker() -> None:
        while True:
            with lock:
                text = next(it, None)
            if text is None:
                return
            t0 = time.perf_counter()
            try:
                hits = call(text)
                ok = len(hits) == K
            except Exception:
                ok = False
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    run.latencies.append(dt)
                else:
                    run.errors += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.wall = time.perf_counter() - t0
    return run


# --- the in-process anchors -----------------------------------------------------------------


def in_process(levels: list[int], texts: list[str], warmup: int, requests: int) -> dict:
    from ctxvec.config import CtxvecConfig
    from ctxvec.refs import ModelRef
    from ctxvec.serve.batcher import MicroBatcher
    from ctxvec.serve.search import Searcher
    from ctxvec.workspace import Workspace

    ws = Workspace.from_env()
    searcher = Searcher(ws, ModelRef.registered(NAME, alias="champion"), CtxvecConfig())
    batcher = MicroBatcher(CtxvecConfig().serve.max_batch)
    out: dict = {}
    offset = 0
    for c in levels:
        chunk = texts[offset : offset + warmup + requests]
        offset += warmup + requests
        warm, measured = chunk[:warmup], chunk[warmup:]
        closed_loop_threads(c, warm, lambda t: searcher.search(t, K))
        direct = closed_loop_threads(c, measured, lambda t: searcher.search(t, K))
        closed_loop_threads(c, warm, lambda t: batcher.search(searcher, t, K).result())
        before = batcher.stats.batches
        batched = closed_loop_threads(c, measured,
                                      lambda t: batcher.search(searcher, t, K).result())
        batched.notes["batches"] = batcher.stats.batches - before
        out[c] = {"direct": direct.row(), "batched": batched.row()}
        print(f"in process, {c:>2} clients: direct {out[c]['direct']}", flush=True)
        print(f"                        batched {out[c]['batched']}", flush=True)
    batcher.close()
    return out


# --- the HTTP load generator ----------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; requests are sent one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                      if k.lower() == "content-length")
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def http_level(port: int, clients: int, texts: list[str]) -> Run:
    run = Run()
    queue = list(reversed(texts))
    conns = [await Connection.open(port) for _ in range(clients)]

    async def client(conn: Connection) -> None:
        while queue:
            body = json.dumps({"text": queue.pop(), "k": K}).encode()
            t0 = time.perf_counter()
            try:
                status, raw = await conn.post("/search", body)
                ok = status == 200 and len(json.loads(raw)["hits"]) == K
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
                ok = False
                conn = await Connection.open(port)
            if ok:
                run.latencies.append(time.perf_counter() - t0)
            else:
                run.errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    run.wall = time.perf_counter() - t0
    for c in conns:
        await c.close()
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port: int) -> dict | None:
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    except OSError:
        return None


def median_row(rows: list[dict]) -> dict:
    """Per metric, the median over repeated runs; errors and requests are summed."""
    out = {k: round(float(np.median([r[k] for r in rows])), 2) for k in rows[0]
           if k not in ("errors", "requests") and rows[0][k] is not None}
    return {**out, "errors": sum(r["errors"] for r in rows),
            "requests": sum(r["requests"] for r in rows), "runs": len(rows)}


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process, MB (from /proc; None where there is none)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


@contextlib.contextmanager
def server(cmd: list[str], port: int, log_path: Path):
    """Run a server command until the block ends; yields its Popen once /health answers."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        deadline = time.monotonic() + 300
        while (h := health(port)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{cmd[:4]} did not start; see {log_path}")
            time.sleep(0.2)
        print(f"{log_path.stem}: {h['index']['factory']} over {h['index_count']} vectors "
              f"(pid {proc.pid}, port {port}, RSS {rss_mb(proc.pid)} MB)", flush=True)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def ctxvec_cmd(port: int, access_log: bool, serve_sets: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "ctxvec.cli", "serve", "--port", str(port),
           "--access-log" if access_log else "--no-access-log"]
    return cmd + [a for s in serve_sets for a in ("--set", s)]


def anchor_cmd(port: int, home: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).parent / "http_anchor.py"), "--home", str(home),
            "--port", str(port)]


def measure_levels(ports: dict[str, int], levels: list[int], texts: list[str], warmup: int,
                   requests: int, repeats: int) -> dict:
    """Each server (name -> port) at each level, repeats x levels x servers interleaved, so
    that a busy minute hits them all alike -> {name: {level: median row}}."""
    runs: dict[str, dict[int, list[dict]]] = {n: {c: [] for c in levels} for n in ports}
    offset = 0
    for _ in range(repeats):
        for c in levels:
            chunk = texts[offset : offset + warmup + requests]
            offset += warmup + requests
            for name, port in ports.items():  # the same texts for every server
                asyncio.run(http_level(port, c, chunk[:warmup]))
                before = health(port)["batching"]
                run = asyncio.run(http_level(port, c, chunk[warmup:]))
                after = health(port)["batching"]
                jobs = after["jobs"] - before["jobs"]
                batches = after["batches"] - before["batches"]
                run.notes["mean_batch"] = round(jobs / batches, 2) if batches else None
                run.notes["load1"] = round(os.getloadavg()[0], 2)
                runs[name][c].append(run.row())
                print(f"{name:8s} {c:>2} clients: {runs[name][c][-1]}", flush=True)
    return {n: {c: median_row(rows) for c, rows in by.items()} for n, by in runs.items()}


def soak(ports: dict[str, int], pids: dict[str, int], clients: int, texts: list[str],
         seconds: float, every: float = 30.0) -> dict:
    """Closed-loop load on each server in turn for ``seconds``: every ``every`` s, its RSS and
    that window's p99 and errors. Texts cycle (ctxvec keeps no query cache, so repeats do not
    help it)."""
    out: dict[str, list[dict]] = {}
    for name, port in ports.items():
        rows = [{"t_s": 0, "rss_mb": rss_mb(pids[name])}]
        print(f"soak {name}: {rows[0]}", flush=True)
        t0, i = time.monotonic(), 0
        while time.monotonic() - t0 < seconds - 1:
            window, n = Run(), 0
            w0 = time.monotonic()
            while time.monotonic() - w0 < every:
                batch = [texts[(i + j) % len(texts)] for j in range(clients * 4)]
                i += len(batch)
                r = asyncio.run(http_level(port, clients, batch))
                window.latencies += r.latencies
                window.errors += r.errors
                n += 1
            window.wall = time.monotonic() - w0
            row = {"t_s": round(time.monotonic() - t0), "rss_mb": rss_mb(pids[name]),
                   **{k: v for k, v in window.row().items() if k != "p50_ms"},
                   "load1": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(f"soak {name}: {row}", flush=True)
        out[name] = rows
    return out


def over_http(home: Path, levels: list[int], texts: list[str], warmup: int, requests: int,
              repeats: int, access_log: bool, serve_sets: list[str], anchor: bool,
              soak_s: float) -> dict:
    """ctxvec serve (and the anchor server) on ``home``'s workspace: the levels, then the soak."""
    with contextlib.ExitStack() as stack:
        ports = {"ctxvec": free_port()}
        procs = {"ctxvec": stack.enter_context(server(
            ctxvec_cmd(ports["ctxvec"], access_log, serve_sets), ports["ctxvec"],
            home / "serve.log"))}
        if anchor:
            ports["anchor"] = free_port()
            procs["anchor"] = stack.enter_context(server(
                anchor_cmd(ports["anchor"], home), ports["anchor"], home / "anchor.log"))
        out = {"levels": measure_levels(ports, levels, texts, warmup, requests, repeats)}
        if soak_s > 0:
            out["soak"] = soak({"ctxvec": ports["ctxvec"]}, {"ctxvec": procs["ctxvec"].pid},
                               max(levels), texts, soak_s)
        return out


def print_tables(name: str, results: dict, levels: list[int]) -> None:
    print(f"\n{name}\n| clients | server | p50 | p99 | req/s | errors | mean batch |"
          " in-process batched p50 / p99 | direct Searcher p50 / p99 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in levels:
        ip = results.get("in_process", {}).get(c)
        b = f"{ip['batched']['p50_ms']} / {ip['batched']['p99_ms']} ms" if ip else "-"
        d = f"{ip['direct']['p50_ms']} / {ip['direct']['p99_ms']} ms" if ip else "-"
        for server_name, by_level in results["http"]["levels"].items():
            h = by_level[c]
            print(f"| {c} | {server_name} | {h['p50_ms']} ms | {h['p99_ms']} ms | "
                  f"{h['req_per_s']} | {h['errors']} of {h['requests']} | "
                  f"{h.get('mean_batch', '-')} | {b} | {d} |")
    for server_name, rows in results["http"].get("soak", {}).items():
        print(f"\nsoak, {server_name}, {max(levels)} clients: RSS every 30 s")
        print("| t (s) | RSS MB | p99 ms | req/s | errors | load |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['t_s']} | {r['rss_mb']} | {r.get('p99_ms', '-')} | "
                  f"{r.get('req_per_s', '-')} | {r.get('errors', '-')} | {r.get('load1', '-')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, action="append", default=None,
                    help="Workspace to build the index in, or to reuse, one per --vectors "
                    f"entry (default: {DEFAULT_HOME.parent}/http-<N>).")
    ap.add_argument("--vectors", default="100000",
                    help="Index size(s), comma-separated: each gets its own workspace and the "
                    "whole measurement (e.g. 100000,30000).")
    ap.add_argument("--factory", default="auto", help="index.factory of a new workspace.")
    ap.add_argument("--levels", default="1,8,32", help="Concurrent clients, comma-separated.")
    ap.add_argument("--requests", type=int, default=600, help="Measured requests per level.")
    ap.add_argument("--warmup", type=int, default=64, help="Unrecorded requests per level.")
    ap.add_argument("--repeats", type=int, default=3,
                    help="HTTP runs per level (levels interleaved); the table shows medians.")
    ap.add_argument("--access-log", action="store_true",
                    help="Serve with uvicorn's access log on (ctxvec serve's default).")
    ap.add_argument("--skip-anchor", action="store_true", help="No in-process rows.")
    ap.add_argument("--anchor-server", action="store_true",
                    help="Also serve the same index with a plain FastAPI + sentence-transformers "
                    "server (bench/http_anchor.py), measured interleaved with ctxvec serve.")
    ap.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                    help="Then load ctxvec serve with the largest level for this long, printing "
                    "its RSS and p99 every 30 s (e.g. 300).")
    ap.add_argument("--serve-set", action="append", default=[], metavar="KEY=VALUE",
                    help="A --set for ctxvec serve, e.g. serve.max_batch=1 (no batching).")
    ap.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    sizes = [int(x) for x in args.vectors.split(",")]
    homes = args.home or [DEFAULT_HOME.parent / ("http-100k" if n == 100_000 else f"http-{n}")
                          for n in sizes]
    if len(homes) != len(sizes):
        raise SystemExit("give one --home per --vectors entry, or none")
    texts = sts_sentences()
    need = len(levels) * (args.warmup + args.requests) * (args.repeats + 1)
    if need > len(texts):
        raise SystemExit(f"{need} requests need {need} distinct texts; STS-B has "
                         f"{len(texts)}: lower --requests, --warmup or --repeats")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import torch

    everything = {}
    for n, home in zip(sizes, homes, strict=True):
        home = home.expanduser().resolve()
        os.environ["CTXVEC_HOME"] = str(home)
        info = workspace(home, n, args.factory)
        print(f"index: {info['factory']} over {info['vectors']} vectors (dim {info['dim']}) of "
              f"{info['docs']} Wikipedia articles, all-MiniLM-L6-v2 = {NAME} version "
              f"{info['version']}; queries: {len(texts)} unique STS-B sentences, k={K}; "
              f"{os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{platform.python_version()}", flush=True)
        results = {"index": info, "levels": levels, "requests": args.requests,
                   "access_log": args.access_log, "load_before": os.getloadavg()}
        offset = 0
        if not args.skip_anchor:
            results["in_process"] = in_process(levels, texts, args.warmup, args.requests)
            offset = len(levels) * (args.warmup + args.requests)
        results["serve_sets"] = args.serve_set
        results["http"] = over_http(home, levels, texts[offset:], args.warmup, args.requests,
                                    args.repeats, args.access_log, args.serve_set,
                                    args.anchor_server, args.soak)
        results["load_after"] = os.getloadavg()
        print_tables(f"{info['vectors']} vectors, {info['factory']}", results, levels)
        print(f"load average before / after: {results['load_before']} / "
              f"{results['load_after']}", flush=True)
        everything[str(n)] = results
    if args.out:
        args.out.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
