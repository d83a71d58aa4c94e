"""Embedding throughput: ctxvec against sentence-transformers `encode`, same model, same sentences.

Model: all-MiniLM-L6-v2 (the `minilm` reference, loaded by both from the same folder). Sentences:
the unique sentences of STS-B train. Runs alternate between the two so that neither gets a warmer
machine. Every ctxvec vector is compared with the anchor's: the minimum cosine is printed (the
contract is >= 0.999).

Rows:
- anchor: `SentenceTransformer.encode(sentences, batch_size=32, normalize_embeddings=True)`, what
  a user writes by hand (fp32; its defaults otherwise).
- ctxvec: `Encoder.load("minilm", precision="auto").encode(...)`: bf16 where the CPU has bf16
  units (AMX / AVX512-BF16) or on a GPU, else fp32; what `ctxvec embed`, `query` and `serve` use.
- ctxvec fp32: the same with precision=fp32, to separate the gain of bf16 from the rest.
- ctxvec embed stage: `run_embed` over a snapshot of the same sentences, Parquet shards included.

    python bench/embed_throughput.py [--repeats 3] [--limit N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
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

from ctxvec.config import load_config  # noqa: E402
from ctxvec.embed.corpus import read_vectors, run_embed  # noqa: E402
from ctxvec.ingest.corpus import iter_corpus  # noqa: E402
from ctxvec.ingest.snapshot import run_ingest  # noqa: E402
from ctxvec.model.encoder import Encoder  # noqa: E402
from ctxvec.model.refs import minilm_dir  # noqa: E402
from ctxvec.train.sts import read_sts  # noqa: E402
from ctxvec.workspace import Workspace  # noqa: E402


def sentences(limit: int | None) -> list[str]:
    pairs = read_sts(SHARED_DATA / "stsbenchmark" / "sts-train.csv")
    unique = list(dict.fromkeys(s for s in pairs.s1 + pairs.s2 if s.strip()))
    return unique[:limit] if limit else unique


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="Use the first N sentences only.")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=64, help="ctxvec's batch size.")
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    sents = sentences(args.limit)
    n = len(sents)
    st = SentenceTransformer(str(minilm_dir()), device=args.device)
    auto = Encoder.load(minilm_dir(), device=args.device, precision="auto")
    fp32 = Encoder.load(minilm_dir(), device=args.device, precision="fp32")
    print(f"{n} sentences; device {args.device}; torch threads {torch.get_num_threads()}; "
          f"ctxvec auto precision -> {auto.precision}", flush=True)

    def run_st():
        return st.encode(sents, batch_size=32, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False)

    # Warm-up on a slice (first-call allocations, oneDNN kernel selection).
    st.encode(sents[:256], batch_size=32)
    auto.encode(sents[:256], batch_size=args.batch_size)
    fp32.encode(sents[:256], batch_size=args.batch_size)

    times: dict[str, list[float]] = {"anchor": [], "ctxvec": [], "ctxvec_fp32": [],
                                     "embed_stage": []}
    ref = ours = ours32 = None
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "home").ensure()
        src = Path(tmp) / "sts.jsonl"
        src.write_text("".join(json.dumps({"id": f"s{i}", "text": s}) + "\n"
                               for i, s in enumerate(sents)))
        cfg = load_config(None, [f"ingest.sources=[{src}]", "ingest.near_dup.enabled=false",
                                 f"embed.batch_size={args.batch_size}",
                                 f"train.device={args.device}"])
        snap = run_ingest(cfg, ws)
        for r in range(args.repeats):
            t, ref = timed(run_st)
            times["anchor"].append(t)
            t, ours = timed(lambda: auto.encode(sents, batch_size=args.batch_size))
            times["ctxvec"].append(t)
            t, ours32 = timed(lambda: fp32.encode(sents, batch_size=args.batch_size))
            times["ctxvec_fp32"].append(t)
            t, emb = timed(lambda r=r: run_embed(cfg, ws, snap, str(minilm_dir()), f"b{r}"))
            times["embed_stage"].append(t)
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                  flush=True)
        stage_vecs, stage_meta = read_vectors(emb.path)
        stage_docs = emb.docs
        stored = {r["doc_id"]: r["text"] for b in iter_corpus(snap.corpus) for r in b.to_pylist()}

    cos_auto = float(np.min(np.sum(ref * ours, axis=1)))
    cos_fp32 = float(np.min(np.sum(ref * ours32, axis=1)))
    by_id = {d: i for i, d in enumerate(stage_meta.column("doc_id").to_pylist())}
    # Ingest cleans text (NFKC, whitespace) and may drop a sentence that cleaning makes equal to
    # another: the stage's vectors are compared where the stored text is the sentence itself.
    kept = [i for i in range(n) if stored.get(f"s{i}") == sents[i]]
    print(f"embed stage: {stage_docs} documents; {len(kept)} stored verbatim (compared), "
          f"{n - len(kept)} changed or merged by ingest cleaning")
    rows = [by_id[f"s{i}"] for i in kept]
    cos_stage = float(np.min(np.sum(ref[kept] * stage_vecs[rows], axis=1)))
    med = {k: statistics.median(v) for k, v in times.items()}
    anchor_rate = n / med["anchor"]
    print(f"\nhost: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; {n} sentences, medians of {args.repeats}")
    print(f"{'path':<34}{'median s':>10}{'sent/s':>10}{'ratio':>8}{'min cos':>10}")
    print(f"{'sentence-transformers encode':<34}{med['anchor']:>10.2f}{anchor_rate:>10.0f}"
          f"{1.0:>8.2f}{1.0:>10.5f}")
    for key, label, cos, count in (
        ("ctxvec", f"ctxvec Encoder ({auto.precision})", cos_auto, n),
        ("ctxvec_fp32", "ctxvec Encoder (fp32)", cos_fp32, n),
        ("embed_stage", "ctxvec run_embed (-> Parquet)", cos_stage, stage_docs),
    ):
        rate = count / med[key]
        print(f"{label:<34}{med[key]:>10.2f}{rate:>10.0f}{rate / anchor_rate:>8.2f}"
              f"{cos:>10.5f}")


if __name__ == "__main__":
    main()
