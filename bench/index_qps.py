"""Index queries/s: ctxvec's ``FaissIndex`` against raw FAISS with the same factory string and the
same search parameter, at recall@10 >= 0.95 against exact search; and build times.

Data (said again in the output): ``--centres`` + ``--queries`` distinct Wikipedia sentences (from
../shared/data/enwiki-wikiextractor) embedded with all-MiniLM-L6-v2. The first ``--centres`` are
cluster centres: every indexed vector is a centre plus seeded Gaussian noise of a random size
(cosine to its centre 0.8-0.97), L2-normalised: 384-d, as many as asked. The queries are the
other sentences' own MiniLM vectors: real text queries, none of them a centre, so their
neighbours spread over several clusters as a new text's would.

For each factory string both indexes are built from the same vectors (ctxvec's with stable 63-bit
ids, raw FAISS with row numbers) and trained on the same sample; the search parameter (nprobe for
IVF, efSearch for HNSW) is raised until raw FAISS reaches recall@10 >= 0.95, then both are timed
with it: batches of 1 and of 64 queries, ``--repeats`` alternating runs, medians.
Ratio = ctxvec queries/s / raw queries/s (target: >= 0.9).

    python bench/index_qps.py [--n 1000000] [--factories IVF4096,Flat HNSW32]
                              [--hnsw-n 200000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gzip
import re
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from measure import SHARED_DATA  # noqa: E402

from ctxvec.index.faiss_index import FaissIndex  # noqa: E402
from ctxvec.index.id_map import chunk_ids  # noqa: E402

WIKI = SHARED_DATA / "enwiki-wikiextractor"
CACHE = Path.home() / ".cache" / "ctxvec-bench"
K = 10
TARGET = 0.95
LADDER = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]


# --- data -----------------------------------------------------------------------------------


def wiki_sentences(n: int, seed: int = 0) -> list[str]:
    """A seeded sample of n distinct sentences of 40-300 characters from the first shards."""
    found: list[str] = []
    seen: set[str] = set()
    for shard in sorted(WIKI.rglob("wiki_*.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for line in f:
                if line.startswith("<") or len(line) < 40:
                    continue
                for s in re.split(r"(?<=[.!?])\s+", line.strip()):
                    if 40 <= len(s) <= 300 and s not in seen:
                        seen.add(s)
                        found.append(s)
        if len(found) >= 4 * n:
            break
    rng = np.random.default_rng(seed)
    return [found[i] for i in sorted(rng.choice(len(found), n, replace=False))]


def sentence_vectors(n: int) -> np.ndarray:
    """MiniLM embeddings of n distinct Wikipedia sentences, cached (a minute or two on 2 cores)."""
    path = CACHE / f"minilm-wiki-{n}.npy"
    if path.is_file():
        return np.load(path)
    from ctxvec.model.encoder import Encoder
    from ctxvec.model.refs import minilm_dir

    t0 = time.perf_counter()
    vecs = Encoder.load(minilm_dir(), device="cpu").encode(wiki_sentences(n), batch_size=128)
    print(f"  embedded {n} sentences with minilm in {time.perf_counter() - t0:.0f} s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def clustered(c: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n vectors around the centres c: centre + Gaussian noise of norm 0.25-0.75, normalised."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, c.shape[1]), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        m = min(step, n - s)
        noise = rng.standard_normal((m, c.shape[1]), dtype=np.float32) / np.sqrt(c.shape[1])
        scale = rng.uniform(0.25, 0.75, size=(m, 1)).astype(np.float32)
        x = c[rng.integers(0, len(c), m)] + scale * noise
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


# --- measuring ------------------------------------------------------------------------------


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def qps(search, queries: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(queries), batch):
        search(queries[s:s + batch])
    return len(queries) / (time.perf_counter() - t0)


def raw_build(x: np.ndarray, factory: str, train_size: int) -> faiss.Index:
    """What a user writes with FAISS alone: the factory string, train on a sample, add."""
    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:  # the same seeded sample ctxvec trains on
        rng = np.random.default_rng(0)
        index.train(x[np.sort(rng.choice(len(x), min(len(x), train_size), replace=False))])
    index.add(x)
    return index


def set_param(index: faiss.Index, factory: str, value: int) -> None:
    if factory.startswith("IVF"):
        faiss.extract_index_ivf(index).nprobe = value
    else:
        faiss.downcast_index(index).hnsw.efSearch = value


def run_factory(factory: str, x: np.ndarray, queries: np.ndarray, repeats: int) -> dict:
    n = len(x)
    truth = faiss.IndexFlatIP(x.shape[1])
    truth.add(x)
    t0 = time.perf_counter()
    gt = truth.search(queries, K)[1]  # (Q, K) row numbers: exact top-10
    exact_s = time.perf_counter() - t0
    del truth
    ids = chunk_ids([f"doc{i // 4}" for i in range(n)], np.arange(n) % 4)  # 4 chunks a doc
    row_of = dict(zip(ids.tolist(), range(n), strict=True))
    nlist = int(re.match(r"IVF(\d+)", factory).group(1)) if factory.startswith("IVF") else 0
    train_size = max(100_000, 39 * nlist)

    t0 = time.perf_counter()
    raw = raw_build(x, factory, train_size)
    raw_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctx = FaissIndex.build(x, ids, factory, train_size=train_size)
    ctx_build_s = time.perf_counter() - t0
    print(f"  {factory}: built raw {raw_build_s:.1f} s, ctxvec {ctx_build_s:.1f} s", flush=True)

    # the smallest parameter at which raw FAISS reaches the target recall
    for value in (v for v in LADDER if not nlist or v <= nlist):
        set_param(raw, factory, value)
        r_raw = recall(raw.search(queries, K)[1], gt)
        if r_raw >= TARGET:
            break
    if factory.startswith("IVF"):
        ctx.nprobe = value
    else:
        ctx.ef_search = value
    got = ctx.search(queries, K)[1]
    r_ctx = recall(np.vectorize(lambda i: row_of.get(i, -1))(got), gt)
    reached = "" if r_raw >= TARGET else f" (target {TARGET} NOT reached at the ladder's top)"
    print(f"  {factory}: parameter {value}, recall@10 raw {r_raw:.4f}, ctxvec {r_ctx:.4f}"
          f"{reached}", flush=True)

    out = {"factory": factory, "n": n, "param": value, "recall_raw": r_raw, "recall_ctx": r_ctx,
           "build_raw": raw_build_s, "build_ctx": ctx_build_s, "exact_s": exact_s}
    for batch in (1, 64):
        qs = queries[:500] if batch == 1 else queries
        times: dict[str, list[float]] = {"raw": [], "ctxvec": []}
        for _ in range(repeats):  # alternate, so that drift of the machine hits both alike
            times["raw"].append(qps(lambda q: raw.search(q, K), qs, batch))
            times["ctxvec"].append(qps(lambda q: ctx.search(q, K), qs, batch))
        med = {k: statistics.median(v) for k, v in times.items()}
        out[f"b{batch}"] = {**med, "ratio": med["ctxvec"] / med["raw"],
                            "runs": {k: [round(t) for t in v] for k, v in times.items()}}
        print(f"  {factory} batch {batch}: raw {med['raw']:.0f} q/s, ctxvec "
              f"{med['ctxvec']:.0f} q/s, ratio {med['ctxvec'] / med['raw']:.3f} "
              f"(runs raw {out[f'b{batch}']['runs']['raw']}, "
              f"ctxvec {out[f'b{batch}']['runs']['ctxvec']})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the index")
    ap.add_argument("--factories", nargs="+", default=["IVF4096,Flat", "HNSW32"])
    ap.add_argument("--hnsw-n", type=int, default=200_000,
                    help="vectors for HNSW factories (a graph build of 1M takes ~10 min on "
                    "2 cores): the first rows of the same data")
    ap.add_argument("--centres", type=int, default=4096)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads", flush=True)
    t0 = time.perf_counter()
    real = sentence_vectors(args.centres + args.queries)
    c, queries = real[:args.centres], np.ascontiguousarray(real[args.centres:])
    x = clustered(c, args.n, seed=1)
    print(f"data: {args.n} x {x.shape[1]} normalised vectors around {args.centres} MiniLM "
          f"embeddings of Wikipedia sentences (Gaussian noise, cosine to centre 0.80-0.97); "
          f"queries: MiniLM embeddings of {args.queries} other sentences; "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for factory in args.factories:
        n = args.hnsw_n if factory.startswith("HNSW") else args.n
        rows.append(run_factory(factory, x[:n], queries, args.repeats))
    print("\n| factory | n | param | recall@10 raw / ctxvec | build raw / ctxvec | "
          "batch 1 q/s raw / ctxvec (ratio) | batch 64 q/s raw / ctxvec (ratio) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        name = "nprobe" if r["factory"].startswith("IVF") else "efSearch"
        short = "" if r["recall_raw"] >= TARGET else " (below target)"
        print(f"| `{r['factory']}` | {r['n']:,} | {name} {r['param']}{short} | "
              f"{r['recall_raw']:.3f} / "
              f"{r['recall_ctx']:.3f} | {r['build_raw']:.1f} s / {r['build_ctx']:.1f} s | "
              f"{r['b1']['raw']:,.0f} / {r['b1']['ctxvec']:,.0f} ({r['b1']['ratio']:.3f}) | "
              f"{r['b64']['raw']:,.0f} / {r['b64']['ctxvec']:,.0f} ({r['b64']['ratio']:.3f}) |")


if __name__ == "__main__":
    main()
