"""Draw the benchmark plots of docs/benchmarks.md from the figures recorded in bench/results.json.

    python bench/plots.py                      # writes docs/img/bench-*.png
    python bench/plots.py --out /tmp/plots     # somewhere else

Nothing is measured here: every number comes from bench/results.json, which copies the tables of
docs/benchmarks.md (each entry names its section, date, hardware and command). A new measurement
goes into docs/benchmarks.md first, then into results.json, then this script is run again.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
OUT = ROOT / "docs" / "img"

CTXVEC = "#2455c3"  # ctxvec's own paths
ANCHOR = "#9aa3b2"  # the reference each benchmark compares with
ACCENT = "#d9822b"  # targets and baselines


def load(path: Path = RESULTS) -> dict[str, dict]:
    """The entries of results.json by id."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {e["id"]: e for e in data["entries"]}


def _footer(fig, *entries: dict) -> None:
    """Date, hardware and command under the plot, so that a copied image keeps its provenance."""
    lines = [f"{e['date']} · {e['hardware']}" for e in entries]
    lines += sorted({f"$ {e['command']}" for e in entries})
    fig.text(0.01, 0.005, "\n".join(_wrap(s, 150) for s in dict.fromkeys(lines)),
             fontsize=6.5, color="#555", va="bottom", ha="left", family="monospace")


def _wrap(s: str, width: int) -> str:
    out, line = [], ""
    for word in s.split(" "):
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = "    " + word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*out, line])


def _bar_labels(ax, bars, fmt: Callable[[float], str], **kw) -> None:
    for b in bars:
        ax.annotate(fmt(b.get_height()), (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points", **kw)


def plot_data_stages(r: dict, out: Path) -> Path:
    """Ingest, tokenizer training and packing against their anchors (issue 3)."""
    import matplotlib.pyplot as plt

    ing, tok, pack = r["ingest"], r["tokenizer_train"], r["packing"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))

    ax = axes[0]
    x = range(len(ing["rows"]))
    w = 0.38
    b1 = ax.bar([i - w / 2 for i in x], [row["anchor_mb_s"] for row in ing["rows"]], w,
                color=ANCHOR, label="anchor: hand-written reader")
    b2 = ax.bar([i + w / 2 for i in x], [row["ctxvec_mb_s"] for row in ing["rows"]], w,
                color=CTXVEC, label="ctxvec ingest (2 workers)")
    _bar_labels(ax, [*b1, *b2], lambda v: f"{v:g}")
    ax.set_xticks(list(x), [f"{row['input']}\n{row['mb']:g} MB" for row in ing["rows"]])
    ax.set_ylabel("MB/s (higher is better)")
    ax.set_title("Ingest: clean, dedup, MinHash-LSH\n(ratio "
                 + ", ".join(f"{row['ratio']:g}" for row in ing["rows"]) + ")", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left")
    ax.set_ylim(0, max(row["anchor_mb_s"] for row in ing["rows"]) * 1.25)

    ax = axes[1]
    names = ["anchor:\nHF train_from_iterator", "ctxvec\nrun_tokenizer"]
    bars = ax.bar(names, [row["median_s"] for row in tok["rows"]], color=[ANCHOR, CTXVEC],
                  width=0.55)
    for i, row in enumerate(tok["rows"]):
        ax.scatter([i] * len(row["runs_s"]), row["runs_s"], color="black", s=12, zorder=3,
                   label="single runs" if i == 0 else None)
    for b, row in zip(bars, tok["rows"], strict=True):
        ax.annotate(f"median {row['median_s']:g} s", (b.get_x() + b.get_width() / 2,
                    max(row["runs_s"])), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 4), textcoords="offset points")
    ax.set_ylabel("seconds (lower is better)")
    ax.set_title(f"Tokenizer training (WordPiece 8k)\nratio anchor/ctxvec {tok['ratio']:g} "
                 f"(target ≥ {tok['target']:g})", fontsize=10)
    ax.legend(fontsize=7.5, loc="lower right")
    ax.set_ylim(0, max(max(row["runs_s"]) for row in tok["rows"]) * 1.2)

    ax = axes[2]
    names = ["anchor:\nencode_batch", "ctxvec run_pack\n(2 workers)"]
    bars = ax.bar(names, [row["m_tokens_s"] for row in pack["rows"]], color=[ANCHOR, CTXVEC],
                  width=0.55)
    _bar_labels(ax, bars, lambda v: f"{v:g} M/s")
    ax.set_ylabel("million tokens/s (higher is better)")
    ax.set_title(f"Packing (128-token sequences)\nratio ctxvec/anchor {pack['ratio']:g} "
                 f"(target ≥ {pack['target']:g})", fontsize=10)
    ax.set_ylim(0, max(row["m_tokens_s"] for row in pack["rows"]) * 1.2)

    fig.suptitle("Data stages against hand-written anchors (issue 3)", fontsize=12)
    _footer(fig, ing, tok, pack)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    return _save(fig, out / "bench-data-stages.png")


def plot_mlm(r: dict, out: Path) -> Path:
    """MLM training throughput: the ctxvec loop against the HF Trainer on an H200 and a CPU."""
    import matplotlib.pyplot as plt

    gpu, cpu = r["mlm_h200"], r["mlm_cpu"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})

    ax = axes[0]
    names = [row["run"].replace(", batch", "\nbatch") for row in gpu["rows"]]
    colors = [ANCHOR if row["run"].startswith("HF") else CTXVEC for row in gpu["rows"]]
    bars = ax.bar(names, [row["tokens_s"] for row in gpu["rows"]], color=colors, width=0.6)
    for b, row in zip(bars, gpu["rows"], strict=True):
        ax.annotate(f"{row['tokens_s']:,} tok/s\nMFU {row['mfu_pct']:.1f}%",
                    (b.get_x() + b.get_width() / 2,
                     max([row["tokens_s"], *row.get("runs_tokens_s", [])])),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 4),
                    textcoords="offset points")
        if "runs_tokens_s" in row:
            ax.scatter([b.get_x() + b.get_width() / 2] * len(row["runs_tokens_s"]),
                       row["runs_tokens_s"], color="black", s=12, zorder=3)
    ax.set_ylabel("tokens/s (higher is better)")
    ax.set_ylim(0, max(row["tokens_s"] for row in gpu["rows"]) * 1.25)
    ax.set_title("BERT-base MLM on one H200, bf16, seq 128\nctxvec/HF Trainer as it comes "
                 f"{gpu['ratio']:g}x; target MFU ≥ {gpu['target_mfu_pct']:g}%: not reached",
                 fontsize=10)
    ax.tick_params(axis="x", labelsize=8)

    ax = axes[1]
    names = ["ctxvec train()\n(mlm objective)", "HF Trainer"]
    bars = ax.bar(names, [row["median_tokens_s"] for row in cpu["rows"]],
                  color=[CTXVEC, ANCHOR], width=0.55)
    for i, row in enumerate(cpu["rows"]):
        ax.scatter([i] * len(row["runs_tokens_s"]), row["runs_tokens_s"], color="black", s=12,
                   zorder=3, label="single runs" if i == 0 else None)
    for b, row in zip(bars, cpu["rows"], strict=True):
        ax.annotate(f"median {row['median_tokens_s']:,} tok/s",
                    (b.get_x() + b.get_width() / 2, max(row["runs_tokens_s"])), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 4), textcoords="offset points")
    ax.set_ylabel("tokens/s (higher is better)")
    ax.set_ylim(0, max(max(row["runs_tokens_s"]) for row in cpu["rows"]) * 1.2)
    ax.set_title(f"BERT-mini MLM on 2 vCPUs, fp32\nratio {cpu['ratio']:g} against the Trainer "
                 "as it comes\n(logits at every position; not the fair anchor: docs/benchmarks.md)",
                 fontsize=9)
    ax.legend(fontsize=7.5, loc="upper right")

    fig.suptitle("Masked-LM training throughput (issue 4)", fontsize=12)
    _footer(fig, gpu, cpu)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, out / "bench-mlm-throughput.png")


def plot_finetune(r: dict, out: Path) -> Path:
    """STS-B dev Spearman during `ctxvec finetune` on configs/finetune-stsb.yaml."""
    import matplotlib.pyplot as plt

    ft = r["finetune_stsb"]
    rho = ft["sts_spearman"]
    steps = [ft["eval_every"] * (i + 1) for i in range(len(rho))]
    fig, ax = plt.subplots(figsize=(8, 4.4))
    ax.plot(steps, rho, marker="o", color=CTXVEC, label="dev Spearman (every 90 steps)")
    ax.axhline(ft["baseline_minilm"], color=ACCENT, ls="--",
               label=f"all-MiniLM-L6-v2 before fine-tuning ({ft['baseline_minilm']:g})")
    ax.axhline(ft["best"], color=CTXVEC, ls=":",
               label=f"best of the run, weights kept ({ft['best']:g}; step after 990)")
    ax.set_xlabel(f"step (of {ft['steps_total']:,})")
    ax.set_ylabel("STS-B dev Spearman")
    ax.set_xlim(0, ft["steps_total"])
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("CoSENT fine-tuning on STS-B train, 2 vCPUs (issue 4)", fontsize=11)
    ax.grid(alpha=0.3)
    _footer(fig, ft)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, out / "bench-finetune-sts.png")


def plot_embed(r: dict, out: Path) -> Path:
    """Sentence embedding throughput against sentence-transformers (issue 5)."""
    import matplotlib.pyplot as plt

    e = r["embed_throughput"]
    rows = e["rows"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    colors = [ANCHOR if row["path"].startswith("sentence-transformers") else CTXVEC
              for row in rows]
    y = list(range(len(rows)))[::-1]
    bars = ax.barh(y, [row["sentences_s"] for row in rows], color=colors, height=0.6)
    for b, row in zip(bars, rows, strict=True):
        ax.annotate(f"{row['sentences_s']:,} /s  ({row['ratio']:.2f}x)",
                    (b.get_width(), b.get_y() + b.get_height() / 2), va="center", fontsize=8,
                    xytext=(3, 0), textcoords="offset points")
    ax.set_yticks(y, [row["path"] for row in rows], fontsize=8.5)
    ax.axvline(rows[0]["sentences_s"] * e["target"], color=ACCENT, ls="--",
               label=f"target: {e['target']:g}x the anchor")
    ax.set_xlabel("sentences/s (higher is better)")
    ax.set_xlim(0, max(row["sentences_s"] for row in rows) * 1.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("all-MiniLM-L6-v2 on 10,566 STS-B sentences, 2 vCPUs (issue 5)", fontsize=11)
    _footer(fig, e)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, out / "bench-embed-throughput.png")


def plot_index(r: dict, out: Path) -> Path:
    """Queries/s of ctxvec's FaissIndex against raw FAISS, single queries and batches of 64."""
    import matplotlib.pyplot as plt

    ix = r["index_qps"]
    rows = ix["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    labels = [f"{row['factory']}\n{row['n']:,} vectors\n{row['parameter']}, "
              f"recall {row['recall_ctxvec']:g}" for row in rows]
    w = 0.38
    for ax, batch in zip(axes, ("b1", "b64"), strict=True):
        x = range(len(rows))
        b1 = ax.bar([i - w / 2 for i in x], [row[f"qps_{batch}_raw"] for row in rows], w,
                    color=ANCHOR, label="raw FAISS")
        b2 = ax.bar([i + w / 2 for i in x], [row[f"qps_{batch}_ctxvec"] for row in rows], w,
                    color=CTXVEC, label="ctxvec FaissIndex")
        _bar_labels(ax, [*b1, *b2], lambda v: f"{v:,.0f}")
        for i, row in enumerate(rows):
            top = max(row[f"qps_{batch}_raw"], row[f"qps_{batch}_ctxvec"])
            ax.annotate(f"ratio {row[f'ratio_{batch}']:.2f}", (i, top), ha="center",
                        fontsize=8, xytext=(0, 14), textcoords="offset points", color=CTXVEC)
        ax.set_xticks(list(x), labels, fontsize=7.5)
        ax.set_title("single queries" if batch == "b1" else "batches of 64 queries",
                     fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("queries/s (higher is better)")
    axes[0].set_ylim(0, max(max(row["qps_b1_ctxvec"], row["qps_b64_ctxvec"]) for row in rows)
                     * 1.25)
    fig.suptitle("Index search, 384-d vectors, 2 vCPUs (issue 5): target within 10% of raw "
                 "FAISS", fontsize=12)
    _footer(fig, ix)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    return _save(fig, out / "bench-index-qps.png")


def plot_http(r: dict, out: Path) -> Path:
    """`ctxvec serve` under closed-loop load: latency and throughput against clients."""
    import matplotlib.pyplot as plt

    h, nb = r["http_latency"], r["http_batching"]
    cur, first = h["current"], h["first"]
    clients = [row["clients"] for row in cur]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))

    ax = axes[0]
    ax.plot(clients, [row["http_p99_ms"] for row in cur], "o-", color=CTXVEC,
            label="HTTP p99 (current)")
    ax.plot(clients, [row["http_p50_ms"] for row in cur], "o--", color=CTXVEC,
            label="HTTP p50 (current)")
    ax.plot(clients, [row["http_p99_ms"] for row in first], "s-", color=CTXVEC, alpha=0.4,
            label="HTTP p99 (first measurement)")
    ax.plot(clients, [row["threads_p99_ms"] for row in cur], "^-", color=ANCHOR,
            label="in process, Searcher.search from C threads, p99")
    ax.plot([row["clients"] for row in nb["rows"]], [row["none_p99_ms"] for row in nb["rows"]],
            "x:", color="#7a3b9c", label="HTTP without micro-batching, p99")
    ax.axhline(h["target_p99_ms"], color=ACCENT, ls="--",
               label=f"target: p99 < {h['target_p99_ms']:g} ms at 32 clients")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = [10, 20, 50, 100, 200, 500, 1000]
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(8, 6000)
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("closed-loop clients")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title("Latency (lower is better)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.grid(alpha=0.3)

    ax = axes[1]
    ax.plot(clients, [row["http_req_s"] for row in cur], "o-", color=CTXVEC,
            label="micro-batcher (current)")
    ax.plot(clients, [row["http_req_s"] for row in first], "s-", color=CTXVEC, alpha=0.4,
            label="micro-batcher (first measurement)")
    ax.plot([row["clients"] for row in nb["rows"]], [row["none_req_s"] for row in nb["rows"]],
            "x:", color="#7a3b9c", label="no batching (serve.max_batch=1)")
    for row in cur:
        ax.annotate(f"mean batch {row['mean_batch']:g}", (row["clients"], row["http_req_s"]),
                    fontsize=7.5, xytext=(4, -12), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("closed-loop clients")
    ax.set_ylabel("requests/s")
    ax.set_title("Throughput (higher is better)", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left")
    ax.grid(alpha=0.3)

    fig.suptitle("ctxvec serve: MiniLM + IVF1024,Flat over 100,020 chunks, k = 10, 2 vCPUs "
                 "(issue 5)", fontsize=12)
    _footer(fig, h, nb)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return _save(fig, out / "bench-http-latency.png")


def _save(fig, path: Path) -> Path:
    """Write the PNG under a temporary name, then rename it into place."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


PLOTS = (plot_data_stages, plot_mlm, plot_finetune, plot_embed, plot_index, plot_http)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=OUT, help="Folder for the PNGs.")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    results = load(args.results)
    for plot in PLOTS:
        print(plot(results, args.out))

if __name__ == "__main__":
    main()
