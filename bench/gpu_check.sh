#!/usr/bin/env bash
# One GPU check, ready to run on a fresh GPU machine that has only this repository: it installs
# ctxvec with pip, runs three short benchmarks and prints one table:
#   1. BERT-base MLM training MFU, bf16 (bench/mlm_throughput.py; target >= 40%)
#   2. MiniLM embedding throughput against sentence-transformers on the GPU, fp32 and bf16
#      anchors (bench/embed_throughput.py; target >= 2x)
#   3. exact search queries/s on the GPU: ctxvec's torch-exact index (ctxvec.index.torch_exact)
#      and FAISS GpuIndexFlatIP where the faiss build has GPU support
# It needs nothing beyond `pip install` (torch's CUDA wheels come from PyPI; no shared data: the
# embedding bench falls back to the sentences of data/demo). Budget: under 8 minutes after the
# install on an H100.
#
#   bash bench/gpu_check.sh               # install, then check (fails without a GPU)
#   bash bench/gpu_check.sh --no-install  # the environment is ready
#   bash bench/gpu_check.sh --smoke       # every step on the CPU at tiny sizes (no GPU needed):
#                                         # only that the steps and their arguments run
# PYTHON (default python3) is the interpreter; PEAK_TFLOPS overrides the dense bf16 peak used
# for MFU (default: from the GPU's name; unknown GPUs print MFU as n/a).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
install=1
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    --no-install) install=0 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

if [ "$smoke" = 0 ] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi -L failed): this check needs one." >&2
  echo "gpu_check: bash bench/gpu_check.sh --smoke runs its steps on the CPU at tiny sizes." >&2
  exit 1
fi
if [ "$install" = 1 ]; then
  if [ "$smoke" = 1 ]; then extras=".[cpu,bench]"; else extras=".[gpu,bench]"; fi
  echo "gpu_check: pip install -e '$extras' sentence-transformers" >&2
  "$PY" -m pip install -q -e "$extras" "sentence-transformers>=3"
fi
if [ "$smoke" = 0 ]; then
  "$PY" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device (a CPU-only torch "
             "build, or a driver older than its CUDA): reinstall torch from PyPI")' 
  device=cuda
else
  device=cpu
fi

gpu_name=$("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")')
if [ -z "${PEAK_TFLOPS:-}" ]; then
  case "$gpu_name" in
    *H100*PCIe*) PEAK_TFLOPS=756 ;;  # dense bf16, per NVIDIA's data sheets
    *H100*|*H200*|*GH200*) PEAK_TFLOPS=989 ;;
    *A100*) PEAK_TFLOPS=312 ;;
    *L40S*) PEAK_TFLOPS=362 ;;
    *L4*) PEAK_TFLOPS=121 ;;
    *) PEAK_TFLOPS="" ;;
  esac
fi
echo "gpu_check: $gpu_name, peak ${PEAK_TFLOPS:-unknown} TFLOP/s bf16 dense; $(date -u +%FT%TZ)" >&2

# 1. MLM MFU (ctxvec's loop only: the HF anchor is bench/mlm_throughput.py's own comparison)
if [ "$smoke" = 1 ]; then
  mlm_args=(--size tiny --batch 4 --seq 32 --steps 3 --warmup 1 --repeats 1)
else
  mlm_args=(--size base --batch 256 --seq 128 --bf16 --steps 40 --warmup 10 --repeats 2)
fi
echo "gpu_check: [1/3] python bench/mlm_throughput.py ${mlm_args[*]} --only ctxvec" >&2
"$PY" bench/mlm_throughput.py "${mlm_args[@]}" --only ctxvec --peak-tflops "${PEAK_TFLOPS:-989}" \
  | tee "$out/mlm.txt" >&2

# 2. embedding throughput against sentence-transformers (fp32 and, where ctxvec runs bf16, bf16)
if [ "$smoke" = 1 ]; then
  embed_args=(--device cpu --smoke --no-stage)
else
  embed_args=(--device cuda --repeats 3 --no-stage --batch-size 256)
fi
echo "gpu_check: [2/3] python bench/embed_throughput.py ${embed_args[*]}" >&2
"$PY" bench/embed_throughput.py "${embed_args[@]}" --json "$out/embed.json" >&2

# 3. exact search queries/s: the torch-exact index, and FAISS on the GPU where it can
if [ "$smoke" = 1 ]; then n=20000; queries=256; else n=1000000; queries=8192; fi
echo "gpu_check: [3/3] exact search over $n x 384 vectors, $queries queries, device $device" >&2
N="$n" Q="$queries" DEVICE="$device" "$PY" - >"$out/search.json" <<'EOF'
import json, os, statistics, sys, time

import numpy as np
import torch

from ctxvec.index.torch_exact import TorchExactIndex

n, nq, device = int(os.environ["N"]), int(os.environ["Q"]), os.environ["DEVICE"]
rng = np.random.default_rng(0)
x = rng.standard_normal((n, 384), dtype=np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
q = np.ascontiguousarray(x[rng.integers(0, n, nq)] + 0.1 * rng.standard_normal((nq, 384), dtype=np.float32))


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def rate(search, batch):
    search(q[:batch])  # warm-up
    sync()
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        for s in range(0, nq, batch):
            search(q[s:s + batch])
        sync()
        runs.append(nq / (time.perf_counter() - t0))
    return statistics.median(runs)


rows = {}
index = TorchExactIndex(x, np.arange(n, dtype=np.int64), device=device)
_, ids = index.search(q[:64], 10)
rows["torch-exact"] = {b: rate(lambda a: index.search(a, 10), b) for b in (1, 64, 1024)}
import faiss  # noqa: E402

if device == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
    res = faiss.StandardGpuResources()
    flat = faiss.GpuIndexFlatIP(res, 384)
    flat.add(x)
    _, fids = flat.search(q[:64], 10)
    agree = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, fids)]))
    rows["faiss GpuIndexFlatIP"] = {b: rate(lambda a: flat.search(a, 10), b) for b in (1, 64, 1024)}
    rows["faiss GpuIndexFlatIP"]["agreement@10"] = agree
elif device == "cuda":
    print("gpu_check: this faiss build has no GPU support: FAISS row skipped", file=sys.stderr)
json.dump({"n": n, "queries": nq, "device": device, "rows": rows}, sys.stdout)
EOF

# the table
GPU="$gpu_name" PEAK="${PEAK_TFLOPS:-}" OUT="$out" "$PY" - <<'EOF'
import json, os, re
from pathlib import Path

out = Path(os.environ["OUT"])
mlm = (out / "mlm.txt").read_text()
m = re.search(r"median ctxvec: (\d+) tokens/s(?:, MFU ([\d.]+)%)?", mlm)
tps, mfu = (m.group(1), m.group(2)) if m else ("?", None)
peak = os.environ["PEAK"]
emb = json.loads((out / "embed.json").read_text())
by = {r["path"]: r for r in emb["rows"]}
search = json.loads((out / "search.json").read_text())

print(f"\nGPU check: {os.environ['GPU']}")
print(f"| check | measured | target |")
print(f"|---|---|---|")
mfu_text = f"{mfu}% ({tps} tokens/s)" if mfu and peak else f"n/a ({tps} tokens/s; peak unknown)"
print(f"| BERT-base MLM MFU, bf16 | {mfu_text} | >= 40% |")
for key, label in (("anchor", "fp32"), ("anchor_bf16", "bf16")):
    if key in by:
        r = by["ctxvec"]
        print(f"| MiniLM embedding, ctxvec {r['label'].split('(')[-1].rstrip(')')} vs "
              f"sentence-transformers {label} | {r['per_s'] / by[key]['per_s']:.2f}x "
              f"({r['per_s']:.0f} vs {by[key]['per_s']:.0f} sentences/s, min cos "
              f"{r['min_cosine']:.4f}) | >= 2x |")
for name, r in search["rows"].items():
    extra = f", agreement@10 with torch-exact {r['agreement@10']:.3f}" if "agreement@10" in r else ""
    print(f"| exact search QPS, {name}, {search['n']:,} x 384 | batch 1: {r['1']:,.0f}; "
          f"batch 64: {r['64']:,.0f}; batch 1024: {r['1024']:,.0f}{extra} | - |")
print(f"\n({emb['sentences']} sentences from {emb['source']}; medians of {emb['repeats']})")
EOF
