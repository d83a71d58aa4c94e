"""Compact vectors: index memory, queries/s and recall@10 of int8 and binary codes (rescored from
the float vectors on disk) and of Matryoshka-style truncation, against the float ``Flat`` index.

Data, twice:
- ``synthetic``: the 1M benchmark of ``bench/index_qps.py``, made by the same generator:
  ``--centres`` MiniLM embeddings of Wikipedia sentences, each indexed vector a centre plus seeded
  Gaussian noise (cosine to its centre 0.80-0.97), normalised, 384-d; queries: MiniLM vectors of
  ``--queries`` other sentences (the centres are the first ``--centres`` of the ``real``
  sample below, so one sample of sentences is embedded for both).
- ``real``: ``--real-n`` MiniLM vectors of distinct Wikipedia sentences, queried with the MiniLM
  vectors of ``--queries`` further sentences. Truncation is only meaningful here: the synthetic
  noise is isotropic, real embeddings are not (and MiniLM was not trained to be truncated).

Truth: the exact float top-10 (``IndexFlatIP`` over the full vectors). Every variant is built
through ctxvec (``FaissIndex`` for float, ``CompactIndex`` saved and opened from disk for the
compact ones, so rescoring reads a memory map as served); truncated variants search
truncated, re-normalised queries, as ``embed.dim`` does. Memory: the bytes an index holds in RAM
(codes or float vectors, plus the 24 bytes a vector of id tables every ctxvec index keeps); the
compact ones' float vectors stay on disk. Queries/s: batches of 64 on the same ``--threads``
for every variant, ``--repeats`` interleaved rounds (every variant once per round), medians;
ratio = variant / float. The load average is printed with every round.

    CTXVEC_SHARED_DATA=/path/to/shared/data python bench/compact_vectors.py
        [--n 1000000] [--real-n 20000] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from index_qps import clustered, sentence_vectors  # noqa: E402
from measure import loadavg  # noqa: E402

from ctxvec.embed.truncate import truncate  # noqa: E402
from ctxvec.index.compact import CompactIndex  # noqa: E402
from ctxvec.index.factory import open_index  # noqa: E402
from ctxvec.index.faiss_index import FaissIndex  # noqa: E402
from ctxvec.index.id_map import chunk_ids  # noqa: E402

K = 10
BATCH = 64
ID_TABLES = 24  # bytes a vector: row ids, sorted ids, their order (FaissIndex and CompactIndex)


@dataclass
class Variant:
    name: str
    index: object
    dim: int | None  # queries truncated to this many components (None: full)
    memory: int
    rescore: int | None = None
    recall: float = 0.0
    qps: list[float] = field(default_factory=list)

    def search(self, queries: np.ndarray) -> np.ndarray:
        q = truncate(queries, self.dim) if self.dim else queries
        if self.rescore is not None:
            self.index.set_params(rescore=self.rescore)
        return self.index.search(q, K)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def variants(x: np.ndarray, ids: np.ndarray, folder: Path, dims: list[int],
             rescores: dict[str, list[int]]) -> list[Variant]:
    n, d = x.shape
    out = [Variant("float Flat", FaissIndex.build(x, ids, "Flat"), None, n * (d * 4 + ID_TABLES))]
    for quantize in ("int8", "binary"):
        sub = folder / quantize
        sub.mkdir()
        CompactIndex.build(x, ids, quantize).save(sub)
        index = open_index(sub)  # the float vectors memory-mapped, as served
        for r in rescores[quantize]:
            out.append(Variant(f"{quantize} + rescore {r}", index, None, index.memory_bytes(),
                               rescore=r))
    for dim in dims:
        if dim < d:
            out.append(Variant(f"float dim {dim}", FaissIndex.build(truncate(x, dim), ids,
                                                                    "Flat"),
                               dim, n * (dim * 4 + ID_TABLES)))
    return out


def run(label: str, x: np.ndarray, queries: np.ndarray, dims: list[int], args) -> None:
    n, d = x.shape
    print(f"\n## {label}: {n:,} x {d}, {len(queries)} queries (recall), "
          f"{args.qps_queries} timed, load {loadavg()}", flush=True)
    ids = chunk_ids([f"doc{i // 4}" for i in range(n)], np.arange(n) % 4)
    truth_index = faiss.IndexFlatIP(d)
    truth_index.add(x)
    truth = ids[truth_index.search(queries, K)[1]]
    del truth_index
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t0 = time.perf_counter()
        vs = variants(x, ids, Path(tmp), dims,
                      {"int8": args.int8_rescores, "binary": args.binary_rescores})
        print(f"  built {len(vs)} variants in {time.perf_counter() - t0:.0f} s", flush=True)
        for v in vs:
            v.recall = recall(v.search(queries), truth)
        timed = queries[:args.qps_queries]
        for rnd in range(args.repeats):  # every variant once a round: drift hits all alike
            for v in vs:
                t0 = time.perf_counter()
                for s in range(0, len(timed), BATCH):
                    v.search(timed[s:s + BATCH])
                v.qps.append(len(timed) / (time.perf_counter() - t0))
            print(f"  round {rnd + 1}/{args.repeats} done, load {loadavg()}", flush=True)
        base = vs[0]
        base_q = statistics.median(base.qps)
        print(f"\n| {label} variant | memory (MB) | smaller than float | recall@10 | q/s "
              "(median) | q/s vs float | runs (q/s) |")
        print("|---|---|---|---|---|---|---|")
        for v in vs:
            q = statistics.median(v.qps)
            print(f"| {v.name} | {v.memory / 1e6:,.1f} | {base.memory / v.memory:.2f}x | "
                  f"{v.recall:.4f} | {q:,.0f} | {q / base_q:.2f} | "
                  f"{', '.join(f'{r:.0f}' for r in v.qps)} |", flush=True)
        print(f"load after: {loadavg()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors (0: skip)")
    ap.add_argument("--real-n", type=int, default=20_000, help="real MiniLM vectors (0: skip)")
    ap.add_argument("--centres", type=int, default=4096)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--qps-queries", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 192, 128])
    ap.add_argument("--int8-rescores", type=int, nargs="+", default=[10, 100],
                    help="candidates rescored per query (10 = k: the codes' own top 10)")
    ap.add_argument("--binary-rescores", type=int, nargs="+",
                    default=[10, 40, 100, 200, 400, 1000])
    ap.add_argument("--tmp", default=None, help="where the compact indexes are written")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, k={K}, "
          f"batches of {BATCH}, load {loadavg()}", flush=True)
    # one sample of sentences serves both (embedding is the slow part on a loaded CPU)
    real = sentence_vectors(max(args.real_n, args.centres) + args.queries)
    queries = np.ascontiguousarray(real[len(real) - args.queries:])
    if args.real_n:
        run("real", np.ascontiguousarray(real[:args.real_n]), queries, args.dims, args)
    if args.n:  # truncation left out: isotropic noise says nothing about it
        run("synthetic", clustered(real[:args.centres], args.n, seed=1), queries, [], args)


if __name__ == "__main__":
    main()
