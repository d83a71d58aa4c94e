"""Embedding throughput: ctxvec against sentence-transformers `encode`, same model, same sentences.

Model: all-MiniLM-L6-v2 (the `minilm` reference, loaded by both from the same folder). Sentences:
the unique sentences of STS-B train. Runs alternate between the two so that neither gets a warmer
machine. Every ctxvec vector is compared with the anchor's: the minimum cosine is printed (the
contract is >= 0.999). The table's `min cos` column is each row's minimum cosine to the
anchor's vector of the same sentence: for ctxvec the contract, for the other anchors how far their
vectors are from the reference model's.

Rows:
- anchor: `SentenceTransformer.encode(sentences, batch_size=32, normalize_embeddings=True)`, what
  a user writes by hand (fp32; its defaults otherwise).
- ctxvec: `Encoder.load("minilm", precision="auto").encode(...)`: bf16 where the CPU has bf16
  units (AMX / AVX512-BF16) or on a GPU, else fp32; what `ctxvec embed`, `query` and `serve` use.
- ctxvec fp32: the same with precision=fp32, to separate the gain of bf16 from the rest.
- ctxvec embed stage: `run_embed` over a snapshot of the same sentences, Parquet shards included.
- anchor bf16: sentence-transformers with its weights loaded in bf16
  (`model_kwargs={"torch_dtype": torch.bfloat16}`), added where ctxvec resolves to bf16 (a GPU, a
  CPU with bf16 units) or with `--st-bf16`: the competent user's setup on such hardware.
- ONNX Runtime fp32 (`--onnx`): the same folder exported by `ctxvec export --format onnx`
  (transformer, pooling and normalisation in one graph), run by an `InferenceSession` with
  `intra_op_num_threads` set to the thread count, every graph optimisation on, sentences sorted
  by length and padded per batch of 64 (the strongest fair setup: the same batching as ctxvec).
- ONNX Runtime int8 (`--onnx-int8`): the same exported graph quantised dynamically (int8 weights,
  activations quantised per batch at run time) by `onnxruntime.quantization.quantize_dynamic` with
  the settings of optimum's `AutoQuantizationConfig` for this CPU's instruction set
  (`ORTQuantizer` is a wrapper of the same call): on AVX2, `avx2(is_static=False)`: uint8 weights,
  symmetric, per channel, full range, every operator ORT quantises dynamically; on AVX512 /
  AVX512-VNNI and arm64, int8 weights. Run as the fp32 session is. optimum itself is not used:
  `pip install optimum[onnxruntime]` resolves to transformers 4.57, huggingface_hub 0.36 and
  tokenizers 0.22 in place of the 5.x / 2.x / 0.23 ctxvec runs with, so it cannot sit beside
  them in one environment; the quantisation call and its settings are the same.
- fastembed (`--fastembed`): fastembed's `TextEmbedding` over the same exported folder, registered
  as a custom model (`TextEmbedding.add_custom_model`, pooling `DISABLED`: the graph pools and
  normalises already) and loaded with `specific_model_path` (no hub access), `threads` set to the
  thread count, `embed(sentences, batch_size=64)`. fastembed's requirements pin
  `huggingface-hub<2`, which would downgrade the hub transformers 5 runs with: install it beside
  them with `pip install --no-deps fastembed loguru mmh3 py_rust_stemmers` (it imports and runs
  with huggingface_hub 2); without it the row is skipped with that reason.

OpenMP's wait policy is set before torch loads, as importing ctxvec sets it for the CLI and the
server: PASSIVE unless `OMP_WAIT_POLICY` is already set (`OMP_WAIT_POLICY=ACTIVE python bench/...`
measures spinning threads). Every torch path in the process, the anchor's included, runs under it.

`--threads 1,2` measures every path at each thread count in turn (torch's `set_num_threads`,
ONNX Runtime's session option, `embed.threads` for the embed stage), interleaved within each
repeat; without it, torch's default. `/proc/loadavg` is printed with every repeat: on a shared
machine the ratios hold only beside the load they were measured under. The table gives each row's
rate against sentence-transformers (`vs ST`), against ONNX Runtime fp32 (`vs ORT`) and ctxvec's
rate over the row's (`ctxvec/x`: above 1, ctxvec is ahead of that row).

    python bench/embed_throughput.py [--repeats 3] [--limit N] [--device cpu|cuda]
        [--threads 1,2] [--onnx] [--onnx-int8] [--fastembed] [--no-stage] [--smoke]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see above)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from measure import SHARED_DATA, loadavg  # noqa: E402

from ctxvec.config import load_config  # noqa: E402
from ctxvec.embed.corpus import read_vectors, run_embed  # noqa: E402
from ctxvec.ingest.corpus import iter_corpus  # noqa: E402
from ctxvec.ingest.snapshot import run_ingest  # noqa: E402
from ctxvec.model.encoder import Encoder  # noqa: E402
from ctxvec.model.refs import minilm_dir  # noqa: E402
from ctxvec.train.sts import read_sts  # noqa: E402
from ctxvec.workspace import Workspace  # noqa: E402

STS_TRAIN = SHARED_DATA / "stsbenchmark" / "sts-train.csv"
DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def sentences(limit: int | None) -> tuple[list[str], str]:
    """The unique sentences of STS-B train; where the shared data is absent (a fresh machine
    with only this repository), the sentences of the repository's demo Wikipedia extract."""
    if STS_TRAIN.is_file():
        pairs = read_sts(STS_TRAIN)
        unique = list(dict.fromkeys(s for s in pairs.s1 + pairs.s2 if s.strip()))
        source = "STS-B train"
    else:
        text = "\n".join(gzip.open(f, "rt", encoding="utf-8").read()
                         for f in sorted(DEMO.glob("wiki_*.gz")))
        text = re.sub(r"<[^>]+>", "\n", text)
        found = (s.strip() for line in text.splitlines()
                 for s in re.split(r"(?<=[.!?])\s+", line))
        unique = list(dict.fromkeys(s for s in found if len(s.split()) >= 4))
        source = f"data/demo ({STS_TRAIN} not found)"
    return (unique[:limit] if limit else unique), source


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class OnnxAnchor:
    """ONNX Runtime fp32 on the graph ``ctxvec export --format onnx`` writes of the same folder:
    one session per thread count, sentences sorted by length, padded per batch."""

    def __init__(self, folder: Path, model_file: str = "model.onnx"):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.ort, self.folder, self.model_file = ort, folder, model_file
        self.names = [i["name"] for i in
                      json.loads((folder / "ctxvec_export.json").read_text())["graph"]["inputs"]]
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.sessions: dict[int, object] = {}

    def session(self, threads: int):
        if threads not in self.sessions:
            so = self.ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.sessions[threads] = self.ort.InferenceSession(
                str(self.folder / self.model_file), so, providers=["CPUExecutionProvider"])
        return self.sessions[threads]

    def encode(self, texts: list[str], threads: int, batch_size: int = 64) -> np.ndarray:
        session = self.session(threads)
        ids = self.tokenizer(texts, truncation=True)["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = np.empty((len(texts), 0), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="np")
            feed = {"input_ids": batch["input_ids"].astype(np.int64),
                    "attention_mask": batch["attention_mask"].astype(np.int64)}
            if "token_type_ids" in self.names:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            vecs = session.run(None, feed)[0]
            if out.shape[1] == 0:
                out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
            out[idx] = vecs
        return out


def int8_settings() -> dict:
    """optimum's ``AutoQuantizationConfig`` for this CPU, dynamic: uint8 weights on AVX2 (its
    ``avx2``), int8 weights with AVX512 or on arm64 (``avx512``, ``avx512_vnni``, ``arm64``);
    symmetric weights, per channel, full range in every case."""
    from onnxruntime.quantization import QuantType

    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    int8 = "avx512" in flags or platform.machine() in ("aarch64", "arm64")
    return {"weight_type": QuantType.QInt8 if int8 else QuantType.QUInt8, "per_channel": True,
            "reduce_range": False,
            "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False}}


def quantize_onnx(folder: Path) -> str:
    """Write ``model_int8.onnx`` beside the fp32 graph; -> its file name."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(folder / "model.onnx"), str(folder / "model_int8.onnx"),
                     **int8_settings())
    return "model_int8.onnx"


class FastembedAnchor:
    """fastembed's ``TextEmbedding`` over the exported folder, one instance per thread count."""

    NAME = "ctxvec-bench/minilm-onnx"

    def __init__(self, folder: Path):
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        self.cls, self.folder = TextEmbedding, folder
        dim = int(json.loads((folder / "config.json").read_text())["hidden_size"])
        if self.NAME not in {m["model"] for m in TextEmbedding.list_supported_models()}:
            TextEmbedding.add_custom_model(
                self.NAME, pooling=PoolingType.DISABLED, normalization=True,
                sources=ModelSource(hf=self.NAME), dim=dim, model_file="model.onnx")
        self.models: dict[int, object] = {}

    def encode(self, texts: list[str], threads: int, batch_size: int = 64) -> np.ndarray:
        if threads not in self.models:
            self.models[threads] = self.cls(self.NAME, threads=threads, cuda=False,
                                            specific_model_path=str(self.folder))
        return np.stack(list(self.models[threads].embed(texts, batch_size=batch_size)))


def fastembed_missing() -> str | None:
    """Why the fastembed row cannot run here, or None."""
    try:
        import fastembed  # noqa: F401
    except ImportError as e:
        return (f"fastembed is not installed ({e}); pip install --no-deps fastembed loguru mmh3 "
                "py_rust_stemmers")
    return None


def export_onnx(tmp: Path) -> Path:
    from ctxvec.model.export import export_model

    out = tmp / "minilm-onnx"
    export_model(minilm_dir(), "onnx", out, exporter="torchscript")
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="Use the first N sentences only.")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=64, help="ctxvec's batch size.")
    ap.add_argument("--threads", default=None,
                    help="Comma-separated CPU thread counts to measure each path at (1,2).")
    ap.add_argument("--onnx", action="store_true", help="Add the ONNX Runtime fp32 anchor.")
    ap.add_argument("--onnx-int8", action="store_true",
                    help="Add ONNX Runtime int8 (dynamic quantisation of the same graph).")
    ap.add_argument("--fastembed", action="store_true",
                    help="Add fastembed over the same exported graph (skipped if not installed).")
    ap.add_argument("--no-stage", action="store_true", help="Leave out the embed stage row.")
    ap.add_argument("--st-bf16", action="store_true",
                    help="Add sentence-transformers in bf16 even where ctxvec resolves to fp32 "
                    "(it is added anyway where ctxvec runs bf16).")
    ap.add_argument("--smoke", action="store_true",
                    help="64 sentences, one repeat: only that every path runs.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the medians here.")
    args = ap.parse_args()
    if args.smoke:
        args.limit, args.repeats = min(args.limit or 64, 64), 1
    args.thread_list = ([int(t) for t in args.threads.split(",")] if args.threads
                        else [torch.get_num_threads()])
    if (args.onnx or args.onnx_int8 or args.fastembed) and args.device != "cpu":
        ap.error("--onnx, --onnx-int8 and --fastembed measure ONNX Runtime's CPU provider: "
                 "use --device cpu")
    if args.fastembed and (why := fastembed_missing()):
        print(f"skipped fastembed: {why}", flush=True)
        args.fastembed = False
    args.exported = args.onnx or args.onnx_int8 or args.fastembed  # rows on the ONNX graph
    return args


def main() -> None:
    args = parse_args()
    from sentence_transformers import SentenceTransformer

    sents, source = sentences(args.limit)
    n = len(sents)
    st = SentenceTransformer(str(minilm_dir()), device=args.device)
    auto = Encoder.load(minilm_dir(), device=args.device, precision="auto")
    fp32 = Encoder.load(minilm_dir(), device=args.device, precision="fp32")
    print(f"{n} sentences ({source}); device {args.device}; threads {args.thread_list}; "
          f"ctxvec auto precision -> {auto.precision}; load {loadavg()}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        exported = export_onnx(Path(tmp)) if args.exported else None
        onnx = OnnxAnchor(exported) if args.onnx else None
        onnx8 = OnnxAnchor(exported, quantize_onnx(exported)) if args.onnx_int8 else None
        fe = FastembedAnchor(exported) if args.fastembed else None
        ws = Workspace(Path(tmp) / "home").ensure()
        src = Path(tmp) / "sts.jsonl"
        src.write_text("".join(json.dumps({"id": f"s{i}", "text": s}) + "\n"
                               for i, s in enumerate(sents)))
        base = [f"ingest.sources=[{src}]", "ingest.near_dup.enabled=false",
                f"embed.batch_size={args.batch_size}", f"train.device={args.device}"]
        snap = run_ingest(load_config(None, base), ws)

        paths = {
            "anchor": lambda t: st.encode(sents, batch_size=32, normalize_embeddings=True,
                                          convert_to_numpy=True, show_progress_bar=False),
            "ctxvec": lambda t: auto.encode(sents, batch_size=args.batch_size),
        }
        if auto.precision != "fp32":
            paths["ctxvec_fp32"] = lambda t: fp32.encode(sents, batch_size=args.batch_size)
        if onnx is not None:
            paths["onnx"] = lambda t: onnx.encode(sents, t, args.batch_size)
        if onnx8 is not None:
            paths["onnx_int8"] = lambda t: onnx8.encode(sents, t, args.batch_size)
        if fe is not None:
            paths["fastembed"] = lambda t: fe.encode(sents, t, args.batch_size)
        if auto.precision == "bf16" or args.st_bf16:
            st16 = SentenceTransformer(str(minilm_dir()), device=args.device,
                                       model_kwargs={"torch_dtype": torch.bfloat16})
            paths["anchor_bf16"] = lambda t: st16.encode(
                sents, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False)
        if not args.no_stage:
            runs = itertools.count()

            def stage(t):
                cfg = load_config(None, base + ([f"embed.threads={t}"] if args.threads else []))
                return run_embed(cfg, ws, snap, str(minilm_dir()), f"b{next(runs)}")
            paths["embed_stage"] = stage

        for t in args.thread_list:  # warm-up: first-call allocations, kernel selection
            torch.set_num_threads(t)
            st.encode(sents[:256], batch_size=32)
            auto.encode(sents[:256], batch_size=args.batch_size)
            for anchor in (onnx, onnx8, fe):
                if anchor is not None:
                    anchor.encode(sents[:256], t)

        times: dict[tuple[int, str], list[float]] = {}
        out: dict[tuple[int, str], object] = {}
        for r in range(args.repeats):
            for t in args.thread_list:
                torch.set_num_threads(t)
                for key, fn in paths.items():
                    dt, out[t, key] = timed(lambda fn=fn, t=t: fn(t))
                    times.setdefault((t, key), []).append(dt)
                print(f"repeat {r + 1}, {t} thread(s), load {loadavg()}: " + ", ".join(
                    f"{k} {times[t, k][-1]:.2f}s" for k in paths), flush=True)
        cos = cosines(out, args.thread_list, paths, snap, sents)
    report(args, times, cos, n, source, auto.precision, paths)


def cosines(out, thread_list, paths, snap, sents) -> dict[tuple[int, str], float]:
    """Min cosine of each path's vectors to the anchor's (at the same thread count)."""
    cos = {}
    for t in thread_list:
        ref = out[t, "anchor"]
        for key in paths:
            if key == "embed_stage":
                emb = out[t, key]
                vecs, meta = read_vectors(emb.path)
                stored = {r["doc_id"]: r["text"] for b in iter_corpus(snap.corpus)
                          for r in b.to_pylist()}
                by_id = {d: i for i, d in enumerate(meta.column("doc_id").to_pylist())}
                # ingest cleans text (NFKC, whitespace): compare where it kept the sentence
                kept = [i for i in range(len(sents)) if stored.get(f"s{i}") == sents[i]]
                rows = [by_id[f"s{i}"] for i in kept]
                cos[t, key] = float(np.min(np.sum(ref[kept] * vecs[rows], axis=1)))
            else:
                cos[t, key] = float(np.min(np.sum(ref * out[t, key], axis=1)))
    return cos


def report(args, times, cos, n, source, precision, paths) -> None:
    labels = {"anchor": "sentence-transformers encode", "ctxvec": f"ctxvec Encoder ({precision})",
              "ctxvec_fp32": "ctxvec Encoder (fp32)", "onnx": "ONNX Runtime fp32",
              "onnx_int8": "ONNX Runtime int8 (dynamic)", "fastembed": "fastembed (same ONNX)",
              "anchor_bf16": "sentence-transformers (bf16)",
              "embed_stage": "ctxvec run_embed (-> Parquet)"}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nhost: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{n} sentences ({source}), medians of {args.repeats}; load after {loadavg()}")
    print(f"{'threads':<8}{'path':<34}{'median s':>10}{'sent/s':>10}{'vs ST':>8}"
          f"{'vs ORT':>8}{'ctxvec/x':>10}{'min cos':>10}")
    rows = []
    for t in args.thread_list:
        anchor_rate = n / med[t, "anchor"]
        ort_rate = n / med[t, "onnx"] if (t, "onnx") in med else None
        for key in paths:
            rate = n / med[t, key]
            vs_ort = f"{rate / ort_rate:>8.2f}" if ort_rate else f"{'-':>8}"
            ours = med[t, key] / med[t, "ctxvec"]  # ctxvec's rate over this row's
            print(f"{t:<8}{labels[key]:<34}{med[t, key]:>10.2f}{rate:>10.0f}"
                  f"{rate / anchor_rate:>8.2f}{vs_ort}{ours:>10.2f}{cos[t, key]:>10.5f}")
            rows.append({"threads": t, "path": key, "label": labels[key],
                         "median_s": med[t, key], "per_s": rate,
                         "vs_sentence_transformers": rate / anchor_rate,
                         "vs_onnxruntime": rate / ort_rate if ort_rate else None,
                         "ctxvec_over_this": med[t, key] / med[t, "ctxvec"],
                         "min_cosine": cos[t, key], "runs_s": times[t, key]})
    if args.json:
        args.json.write_text(json.dumps({"sentences": n, "source": source, "device": args.device,
                                         "repeats": args.repeats, "load": loadavg(),
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
