"""Draw docs/img/architecture.png: ctxvec's pieces and how data flows between them.

    python docs/img/architecture.py            # rewrites docs/img/architecture.png

The same picture is a Mermaid diagram in docs/architecture.md (GitHub renders that one); this PNG
is for every other viewer. Boxes and arrows only, drawn with matplotlib on a 100 x 64 grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

OUT = Path(__file__).resolve().with_name("architecture.png")

# colours of the kinds of boxes
STAGE = "#e7eefc"  # a pipeline stage (one Prefect task, one run_* function)
STAGE_EDGE = "#2455c3"
STORE = "#fff4d6"  # something that holds state: registry, workspace
STORE_EDGE = "#b7791f"
SERVE = "#e3f4e8"  # what answers queries
SERVE_EDGE = "#2f855a"
ENGINE = "#f1e8f8"  # the scale-out engines
ENGINE_EDGE = "#7a3b9c"
BAND = "#f6f7f9"


def box(ax, x: float, y: float, w: float, h: float, title: str, body: str = "",
        face: str = STAGE, edge: str = STAGE_EDGE, size: float = 8.5) -> tuple:
    """A rounded box with a bold title and a smaller body; returns its (x, y, w, h)."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.25,rounding_size=0.8",
                                fc=face, ec=edge, lw=1.3, zorder=2))
    if body:
        ax.text(x + w / 2, y + h - 0.9, title, ha="center", va="top", fontsize=size,
                weight="bold", zorder=3)
        ax.text(x + w / 2, y + h - 2.7, body, ha="center", va="top", fontsize=size - 2,
                color="#333", zorder=3, linespacing=1.25)
    else:
        ax.text(x + w / 2, y + h / 2, title, ha="center", va="center", fontsize=size,
                weight="bold", zorder=3)
    return (x, y, w, h)


def band(ax, x: float, y: float, w: float, h: float, label: str) -> None:
    """A shaded area behind the boxes of one Prefect flow, labelled top left."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.3,rounding_size=1.2",
                                fc=BAND, ec="#b8bfcc", lw=1, ls="--", zorder=1))
    ax.text(x + 0.8, y + h - 0.5, label, ha="left", va="top", fontsize=10, color="#444",
            style="italic", zorder=3)


def arrow(ax, a: tuple, b: tuple, label: str = "", color: str = "#333", rad: float = 0.0,
          label_at: float = 0.5, label_dy: float = 0.8, ls: str = "-") -> None:
    """An arrow from point a to point b, with an optional label near its middle."""
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=11, lw=1.2,
                                 color=color, connectionstyle=f"arc3,rad={rad}", ls=ls,
                                 zorder=4, shrinkA=1, shrinkB=1))
    if label:
        mx = a[0] + (b[0] - a[0]) * label_at
        my = a[1] + (b[1] - a[1]) * label_at + label_dy
        ax.text(mx, my, label, ha="center", va="bottom", fontsize=8, color=color, zorder=5,
                bbox={"fc": "white", "ec": "none", "pad": 0.4, "alpha": 0.85})


def right(b: tuple) -> tuple:
    return (b[0] + b[2], b[1] + b[3] / 2)


def left(b: tuple) -> tuple:
    return (b[0], b[1] + b[3] / 2)


def top(b: tuple, f: float = 0.5) -> tuple:
    return (b[0] + b[2] * f, b[1] + b[3])


def bottom(b: tuple, f: float = 0.5) -> tuple:
    return (b[0] + b[2] * f, b[1])


def draw(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(17, 11))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 64)
    ax.axis("off")
    ax.text(50, 63.4, "ctxvec: how data flows", ha="center", va="top", fontsize=16,
            weight="bold")
    fs = 10.5  # box titles; bodies are 2 points smaller

    # --- the pipeline flow: stages left to right, then right to left ----------------------
    band(ax, 1, 34, 78, 26, "Prefect flow ctxvec-pipeline (flows/pipeline.py): one task per "
         "stage; unchanged stages are cached  ·  ctxvec run --config RECIPE")
    w, h, y1, y2 = 10.6, 8.6, 48.6, 36.2
    xs = [2.5 + 12.8 * i for i in range(6)]
    src = box(ax, xs[0], y1, w, h, "sources", "txt, md, jsonl, csv,\nparquet, wikiextractor"
              "\n(.gz / .zst)", face="white", edge="#666", size=fs)
    ingest = box(ax, xs[1], y1, w, h, "ingest", "clean, dedup,\nnear-dup (MinHash)\n"
                 "→ corpus snapshot", size=fs)
    tok = box(ax, xs[2], y1, w, h, "tokenizer", "WordPiece, BPE,\nUnigram, or the\n"
              "model's own", size=fs)
    pack = box(ax, xs[3], y1, w, h, "pack", "concat / doc / pair\n→ token shards\n"
               "(Parquet)", size=fs)
    train = box(ax, xs[4], y1, w, h, "train", "MLM, MNRL, SimCSE,\nCoSENT, classif.\n"
                "checkpoints, resume", size=fs)
    evaluate = box(ax, xs[5], y1, w, h, "evaluate", "STS-B, BEIR, WiC,\npseudo-perplexity"
                   "\n→ evaluation.json", size=fs)
    for a, b in ((src, ingest), (ingest, tok), (tok, pack), (pack, train), (train, evaluate)):
        arrow(ax, right(a), left(b))

    register = box(ax, xs[5], y2, w, h, "register", "MLflow run, pyfunc,\nsafetensors, "
                   "tags;\nalias challenger", size=fs)
    embed = box(ax, xs[4], y2, w, h, "embed", "chunk vectors\n→ embeddings/vN\n(Parquet)",
                size=fs)
    index = box(ax, xs[3], y2, w, h, "index", "FAISS + BM25\n+ word senses\n→ indexes/vN",
                size=fs)
    promote = box(ax, xs[2], y2, w, h, "promote", "link index_uri,\nmove champion\n"
                  "(the switch)", size=fs)
    sample = box(ax, xs[1], y2, w, h, "sample query", "the recipe's query\nto the new\n"
                 "champion", size=fs)
    arrow(ax, bottom(evaluate), top(register))
    for a, b in ((register, embed), (embed, index), (index, promote), (promote, sample)):
        arrow(ax, left(a), right(b))

    # --- the registry: a column beside everything that reads or moves its aliases ----------
    reg = box(ax, 86, 9.5, 13, 50.5, "MLflow registry",
              "registered model\nctxvec-encoder\nversions 1 … N\n\n"
              "aliases\nchampion: serves\nchallenger: newest\n\n"
              "version tags\ndata_snapshot\nparent_version\ntokenizer_hash\ndim, index_uri"
              "\neval.*, gate.*\ndrift\n\nweights: safetensors\nin a pyfunc model\n"
              "(models:/…@champion)\n\nSQLite in the\nworkspace, or\n"
              "MLFLOW_TRACKING_URI\n(a server on\nPostgres + S3)", face=STORE, edge=STORE_EDGE,
              size=11)
    arrow(ax, right(register), (reg[0], 42.5), "new\nversion", color=STORE_EDGE,
          label_dy=0.4)
    arrow(ax, bottom(promote, 0.75), (reg[0], 35.5), "champion → vN", color=STORE_EDGE,
          rad=0.1, label_at=0.55, label_dy=-2.4)

    # --- serving ------------------------------------------------------------------------
    serve = box(ax, 36, 24.6, 43, 7.4, "query and serve: the champion and its own index",
                "ctxvec query TEXT | --id | --vector-file | --hybrid | --word W --context S\n"
                "ctxvec serve: POST /search /embed /senses /explain · GET /health /models · "
                "web page /\nfollows the alias: a new champion is served without dropping "
                "requests", face=SERVE, edge=SERVE_EDGE, size=fs)
    users = box(ax, 2.5, 24.6, 27, 7.4, "applications and people",
                "CLI (--json: one JSON object)\nHTTP (X-API-Key) · browser",
                face="white", edge="#666", size=fs)
    arrow(ax, right(users), left(serve), "text · id · vector", color=SERVE_EDGE)
    arrow(ax, (reg[0], 28.3), right(serve), "alias → version\n→ index_uri", color=SERVE_EDGE,
          label_dy=0.5)
    arrow(ax, bottom(index, 0.5), top(serve, 0.16), "index files", color=SERVE_EDGE,
          label_at=0.5, label_dy=-0.6)

    # --- the continual update -----------------------------------------------------------
    band(ax, 1, 9.5, 78, 12.6, "Prefect flow ctxvec-continual (flows/continual.py)  ·  "
         "ctxvec update --config RECIPE")
    cw, ch, cy = 9.8, 8.2, 10.6
    cx = [2.5 + 10.9 * i for i in range(7)]
    steps = [
        ("ingest", "only new\ndocuments"),
        ("plan", "new vs old by\nthe champion's\ndata_snapshot"),
        ("train", "from champion:\nreplay, L2-SP\nor EWC, distill"),
        ("evaluate", "both models on\nold.* and new.*\n+ recipe sets"),
        ("register", "the challenger\n(update key,\nparent)"),
        ("gate", "new improves,\nold within\ntolerance"),
        ("deploy", "embed, index,\nmove champion,\ndrift report"),
    ]
    cboxes = [box(ax, x, cy, cw, ch, t, b, size=fs) for x, (t, b) in zip(cx, steps,
                                                                      strict=True)]
    for a, b in zip(cboxes, cboxes[1:], strict=False):
        arrow(ax, right(a), left(b))
    arrow(ax, (reg[0], 20.2), top(cboxes[2], 0.75), "weights of the champion (parent)",
          color=STORE_EDGE, label_at=0.5, label_dy=0.15, ls="--")
    arrow(ax, right(cboxes[6]), (reg[0], cy + ch / 2), "if the\ngate\npasses",
          color=STORE_EDGE, label_dy=0.4)

    # --- the workspace and the engines --------------------------------------------------
    box(ax, 1, 0.5, 49, 7.6, "workspace: $CTXVEC_HOME (a folder, or s3://… + local cache)",
        "snapshots/  tokenizers/  packed/  runs/  embeddings/vN/  indexes/vN/\n"
        "mlflow.db  mlartifacts/  prefect/  prefect-results/\n"
        "each stage: staging folder + manifest.json, then rename into place",
        face=STORE, edge=STORE_EDGE, size=fs)
    box(ax, 51.5, 0.5, 47.5, 7.6, "beyond one machine: existing engines",
        "Prefect server + work pools ctxvec-cpu / ctxvec-gpu (limit gpu-train)\n"
        "torchrun DDP (train.nproc_per_node) · Ray Data embedding (embed.engine: ray)\n"
        "FAISS IVF-PQ on GPU, sharded indexes · MLflow on Postgres + S3 · S3 workspace",
        face=ENGINE, edge=ENGINE_EDGE, size=fs)

    fig.tight_layout(pad=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    print(draw(ap.parse_args().out))


if __name__ == "__main__":
    main()
