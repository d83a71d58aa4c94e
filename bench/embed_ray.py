"""Embedding on Ray against the local path: same machine, same corpus, same model, one process.

Corpus: the first ``--docs`` documents ingest keeps from the Wikipedia shards of
../shared/data/enwiki-wikiextractor (one snapshot). Model: all-MiniLM-L6-v2 (the `minilm`
reference), chunks of its 256-token window, ``embed.precision`` auto (bf16 on a CPU with bf16
units or on a GPU). Both paths run ``run_embed`` end to end (read the snapshot, chunk, encode,
write Parquet, manifest), alternating within each repeat; medians of ``--repeats``.

- local: ``embed.engine=local`` (this process; one worker per GPU with ``--device cuda``).
- ray: ``embed.engine=ray``: Ray Data ``read_parquet`` -> ``map_batches`` over an actor pool
  (``--actors`` x ``--num-cpus`` CPUs / ``--num-gpus`` GPUs), on a local Ray started once by
  this script as the engine starts it (``ray_session``), or the cluster at ``--address``.

Overheads printed: Ray's start-up (once per process: what `ctxvec embed` pays per call), dataset
planning (read_parquet's schema sampling and plan, per run), the actors' start (process, imports,
encoder load: until the last one is ready, per run), and per-run overhead = median Ray wall -
median local wall. The last Ray run's vectors are checked against the last local run's (same
chunks; cosine).

    python bench/embed_ray.py [--docs 1000] [--repeats 3] [--device cpu|cuda] [--actors N]
                              [--num-cpus C] [--num-gpus G] [--ray-batch 256] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from measure import SHARED_DATA  # noqa: E402

from ctxvec.artifacts import Snapshot  # noqa: E402
from ctxvec.config import load_config  # noqa: E402
from ctxvec.embed.corpus import iter_shards, read_vectors, run_embed  # noqa: E402
from ctxvec.embed.ray_engine import ray_session  # noqa: E402
from ctxvec.embed.shards import chunk_documents  # noqa: E402
from ctxvec.ingest.corpus import committed_snapshots, count_docs  # noqa: E402
from ctxvec.ingest.snapshot import run_ingest  # noqa: E402
from ctxvec.model.encoder import Encoder  # noqa: E402
from ctxvec.model.refs import minilm_dir  # noqa: E402
from ctxvec.workspace import Workspace  # noqa: E402

WIKI = SHARED_DATA / "enwiki-wikiextractor"


def ingested(ws: Workspace, docs: int) -> Snapshot:
    """The workspace's first snapshot (a kept ``--home`` is reused as it is: a second ingest with
    ``max_docs`` would add the next documents), else a new one of the first ``docs`` documents."""
    snaps = committed_snapshots(ws)
    if not snaps:
        cfg = load_config(None, [f"ingest.sources=[{WIKI}]", f"ingest.max_docs={docs}",
                                 "ingest.workers=2"])
        return run_ingest(cfg, ws)
    corpus = [str(snaps[0])]
    return Snapshot(snaps[0].name, corpus[0], corpus, count_docs(corpus), False,
                    0, 0, 0, 0, 0, 0, 0, 0)


def count_tokens(corpus: list[str], model_dir: str, stride: int) -> tuple[int, int]:
    """(chunks, tokens) of the corpus as both paths cut it (the same ``chunk_documents``)."""
    enc = Encoder.load(model_dir, device="cpu")
    max_tokens = enc.settings.max_length
    chunks = tokens = 0
    for _, _, texts in iter_shards(corpus, 1024):
        ids, _, _, _ = chunk_documents(enc, texts, max_tokens, min(stride, max_tokens // 2))
        chunks += len(ids)
        tokens += sum(len(x) for x in ids)
    return chunks, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1000, help="Wikipedia documents to embed.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=64, help="embed.batch_size (sequences).")
    ap.add_argument("--ray-batch", type=int, default=256,
                    help="embed.ray.batch_size (documents per map_batches batch).")
    ap.add_argument("--actors", type=int, default=None, help="embed.ray.actors (default: auto)")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="embed.ray.num_cpus per actor")
    ap.add_argument("--num-gpus", type=float, default=None, help="embed.ray.num_gpus per actor")
    ap.add_argument("--address", default=None, help="embed.ray.address (default: local Ray)")
    ap.add_argument("--home", type=Path, default=None,
                    help="Workspace to ingest into (kept; default: a temporary folder).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ray").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(args.home or Path(tmp) / "home").ensure()
        common = [f"train.device={args.device}", f"embed.batch_size={args.batch_size}",
                  "embed.words.enabled=false"]
        snap = ingested(ws, args.docs)
        ray_sets = ["embed.engine=ray", f"embed.ray.batch_size={args.ray_batch}",
                    f"embed.ray.num_cpus={args.num_cpus}"]
        ray_sets += [f"embed.ray.actors={args.actors}"] if args.actors else []
        ray_sets += [f"embed.ray.num_gpus={args.num_gpus}"] if args.num_gpus is not None else []
        ray_sets += [f"embed.ray.address={args.address}"] if args.address else []
        cfg_local = load_config(None, common)
        cfg_ray = load_config(None, common + ray_sets)
        model = str(minilm_dir())
        chunks, tokens = count_tokens(snap.corpus, model, cfg_local.embed.stride)
        docs = snap.corpus_docs
        print(f"{docs} documents, {chunks} chunks, {tokens} tokens; device {args.device}; "
              f"{os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}", flush=True)

        times: dict[str, list[float]] = {"local": [], "ray": []}
        figures: list[dict] = []
        with ray_session(args.address) as (startup_s, _):
            print(f"Ray start-up: {startup_s:.2f}s", flush=True)
            # warm-up: first-call allocations and kernel selection, outside the timings
            warm = Encoder.load(model, device=args.device, precision=cfg_local.embed.precision)
            _, _, texts = next(iter_shards(snap.corpus, 64))
            warm.encode(texts, batch_size=args.batch_size)
            del warm
            for r in range(args.repeats):
                t0 = time.perf_counter()
                loc = run_embed(cfg_local, ws, snap, model, f"local{r}")
                times["local"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ray_emb = run_embed(cfg_ray, ws, snap, model, f"ray{r}")
                times["ray"].append(time.perf_counter() - t0)
                m = json.loads((Path(ray_emb.path) / "manifest.json").read_text())
                figures.append(m["ray"])
                print(f"repeat {r + 1}: local {times['local'][-1]:.2f}s, ray "
                      f"{times['ray'][-1]:.2f}s (plan {m['ray']['plan_seconds']:.2f}s, actors "
                      f"{m['ray']['actors']}, last actor ready after "
                      f"{m['ray']['actor_start_seconds']:.2f}s, batches per actor "
                      f"{m['ray']['batches_per_actor']})", flush=True)
            # the same chunks, the same vectors (up to the precision's rounding)
            a, ma = read_vectors(loc.path)
            b, mb = read_vectors(ray_emb.path)
            key = ["doc_id", "chunk", "start", "end"]
            ka = {tuple(r[k] for k in key): i for i, r in enumerate(ma.to_pylist())}
            kb = {tuple(r[k] for k in key): i for i, r in enumerate(mb.to_pylist())}
            assert set(ka) == set(kb) and len(ka) == chunks, "the two paths' chunks differ"
            order = [kb[k] for k in ka]
            cos = float(np.min(np.sum(a * b[order], axis=1)))
            precision = m["precision"]

    med = {k: statistics.median(v) for k, v in times.items()}
    plan_s = statistics.median(f["plan_seconds"] for f in figures)
    start_s = statistics.median(f["actor_start_seconds"] for f in figures)
    load_s = statistics.median(f["actor_load_seconds"] for f in figures)
    print(f"\nhost: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"device {args.device}, precision {precision}; {docs} docs / {chunks} chunks / "
          f"{tokens} tokens; medians of {args.repeats}; Ray: {figures[-1]['actors']} actor(s) x "
          f"{figures[-1]['num_cpus']:g} CPU / {figures[-1]['num_gpus']:g} GPU, "
          f"{args.ray_batch} docs per batch")
    print(f"{'path':<8}{'median s':>10}{'docs/s':>10}{'chunks/s':>10}{'tokens/s':>11}"
          f"{'ratio':>8}")
    for path in ("local", "ray"):
        t = med[path]
        print(f"{path:<8}{t:>10.2f}{docs / t:>10.1f}{chunks / t:>10.1f}{tokens / t:>11.0f}"
              f"{med['local'] / t:>8.2f}")
    print(f"ray/local throughput ratio: {med['local'] / med['ray']:.2f}")
    print(f"overhead: Ray start-up {startup_s:.2f}s (once per process), dataset planning "
          f"{plan_s:.2f}s per run, actors ready {start_s:.2f}s after the run's start (of which "
          f"encoder load {load_s:.2f}s) per run; "
          f"per-run overhead (ray wall - local wall) {med['ray'] - med['local']:+.2f}s")
    print(f"min cosine ray vs local over {chunks} chunks: {cos:.6f}")


if __name__ == "__main__":
    main()
