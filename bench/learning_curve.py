"""The learning curve of a pretraining recipe: training loss and held-out MLM loss/perplexity
against tokens seen, for a fixed budget, as a PNG (and the numbers as CSV).

    python bench/learning_curve.py --config configs/scratch-mini.yaml --steps 400 \\
        --out docs/img/scratch-mini-curve.png

It runs `ctxvec pretrain` in a fresh workspace (so the corpus is ingested and the tokenizer
trained as the recipe says) and plots the run's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/scratch-mini.yaml")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--out", default="docs/img/scratch-mini-curve.png")
    ap.add_argument("--set", action="append", default=[], help="Extra overrides.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "CTXVEC_HOME": home}
        cmd = [sys.executable, "-m", "ctxvec.cli", "--log-level", "WARNING", "pretrain",
               "--config", args.config, "--json", "--set", f"train.steps={args.steps}",
               "--set", f"train.eval_every={args.eval_every}", "--set", "train.log_every=10",
               *[x for s in args.set for x in ("--set", s)]]
        t0 = time.time()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        result = json.loads(out.stdout)
        rows = [json.loads(x) for x in (Path(result["run_dir"]) / "metrics.jsonl")
                .read_text().splitlines()]
    wall = time.time() - t0
    train = [(r["tokens_seen"], r["loss"]) for r in rows if "loss" in r]
    tokens_at = {r["step"]: r["tokens_seen"] for r in rows if "tokens_seen" in r}
    evals = [(tokens_at.get(r["step"], 0), r["eval/eval_loss"]) for r in rows
             if "eval/eval_loss" in r]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot([t / 1e6 for t, _ in train], [v for _, v in train], label="training loss")
    ax[0].plot([t / 1e6 for t, _ in evals], [v for _, v in evals], "o-", label="held-out loss")
    ax[0].set_xlabel("tokens seen (millions)")
    ax[0].set_ylabel("MLM cross-entropy")
    ax[0].legend()
    ax[1].plot([t / 1e6 for t, _ in evals], [math.exp(v) for _, v in evals], "o-")
    ax[1].set_yscale("log")
    ax[1].set_xlabel("tokens seen (millions)")
    ax[1].set_ylabel("held-out MLM perplexity")
    fig.suptitle(f"{Path(args.config).stem}: {args.steps} steps, {wall / 60:.1f} min")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    csv = Path(args.out).with_suffix(".csv")
    csv.write_text("tokens_seen,train_loss,heldout_loss\n" + "".join(
        f"{t},{v:.5f},\n" for t, v in train) + "".join(f"{t},,{v:.5f}\n" for t, v in evals))
    print(json.dumps({"plot": args.out, "csv": str(csv), "wall_s": round(wall, 1),
                      "final_train_loss": train[-1][1] if train else None,
                      "heldout": [(t, round(v, 4), round(math.exp(v), 1)) for t, v in evals],
                      "metrics": result["metrics"]}))


if __name__ == "__main__":
    main()
