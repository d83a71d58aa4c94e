"""Label-free domain adaptation, measured: each mined signal alone and combined, and whether the
label-free measure ranks models as real nDCG@10 does.

    python bench/adapt_ablation.py --home /tmp/ctxvec-ablation               # every variant
    python bench/adapt_ablation.py --home /tmp/ctxvec-ablation --only minilm,combined
    python bench/adapt_ablation.py --home /tmp/ab --eval-docs 2000 --steps 60   # quicker

1. ``configs/adapt-domain.yaml`` on a BEIR ``corpus.jsonl`` (default: ArguAna under
   ``../shared/data``): ingest and mine once, in the workspace ``--home``, exactly as
   ``ctxvec run`` does (the library's own stages: ingest, tokenizer, mine).
2. One model per variant, every one from all-MiniLM-L6-v2 with the recipe's settings; variants
   differ only in what they train on (``data.signals``, the objective) or in one deliberate
   harm. Each is trained by the pipeline's train stage and scored by its evaluate stage with
   the recipe's evaluations (label-free ``pseudo``, STS-B dev when present) plus the corpus's
   real labels (``evaluate.retrieval``: the BEIR queries and qrels, never seen by training).
3. A table on stdout (nDCG@10, the label-free nDCG@10, STS-B, wall time per variant) and the
   Spearman rank correlation between the label-free and the real nDCG@10 over the variants.

``--eval-docs N`` scores real retrieval on a smaller corpus (every judged document plus a fixed
sample of the others up to N): the same queries and labels, a cheaper search; the table says so.
Each finished variant is kept in ``<home>/ablation/<variant>.json``: a re-run resumes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "adapt-domain.yaml"
BEIR = ROOT.parent / "shared" / "data" / "beir-arguana"
STS_DEV = ROOT.parent / "shared" / "data" / "stsbenchmark" / "sts-dev.csv"
MNRL = "{name: mnrl, scale: 20.0, data: {source: mined%s}}"

# name -> (what it is, recipe overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "minilm": ("all-MiniLM-L6-v2 as shipped (no training)", ["train.steps=0"]),
    "combined": ("every mined signal, in-batch negatives (the recipe)", []),
    "title_text": ("title <-> text alone",
                   [f"train.objectives=[{MNRL % ', signals: [title_text]'}]"]),
    "ict": ("inverse cloze task alone", [f"train.objectives=[{MNRL % ', signals: [ict]'}]"]),
    "crops": ("independent crops alone",
              [f"train.objectives=[{MNRL % ', signals: [crops]'}]"]),
    "neighbours": ("neighbouring passages alone",
                   [f"train.objectives=[{MNRL % ', signals: [neighbours]'}]"]),
    "pseudo": ("pseudo-queries alone (sentence + keywords)",
               [f"train.objectives=[{MNRL % ', signals: [pseudo_sentence, pseudo_keywords]'}]"]),
    "bm25_negatives": ("every signal plus one BM25 hard negative a pair (the recipe until "
                       "2026-12-05)", ["adapt.negatives.per_example=1"]),
    "tsdae": ("TSDAE alone: a denoising auto-encoder on the corpus's sentences",
              ["train.objectives=[{name: tsdae}]"]),
    "seq256": ("the recipe trained at 256 tokens (the length embed and evaluation read), "
               "50 steps", ["train.seq_len=256", "train.steps=50"]),
    "mlm": ("masked-LM on the corpus at 5e-5 (the old default adaptation)",
            ["train.objectives=[{name: mlm}]", "train.lr=5.0e-5"]),
    "lr6e-5": ("the recipe at 3x the learning rate (6e-5)", ["train.lr=6.0e-5"]),
    "harmed": ("deliberately harmed: 30 steps at 50x the learning rate, no warm-up",
               ["train.lr=1.0e-3", "train.warmup_steps=0", "train.steps=30"]),
}

# name -> (variant whose run it is taken from, checkpoint step, what it is): a model a variant's
# run passed through, scored without training anything again
CHECKPOINTS: dict[str, tuple[str, int, str]] = {
    "combined@50": ("combined", 50, "the recipe after 50 of its 100 steps (its checkpoint)"),
    "lr6e-5@50": ("lr6e-5", 50, "3x the learning rate, after 50 of 100 steps (checkpoint)"),
}


def log_line(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


def judged_subset(beir: Path, out: Path, n_docs: int, n_queries: int | None) -> Path:
    """A BEIR folder with the test queries (the ``n_queries`` of smallest hash, or all) and
    their qrels, over every document they judge plus the others of smallest hash, up to
    ``n_docs`` documents: the same task, with labels, at a fraction of the cost."""
    if (out / "corpus.jsonl").is_file():
        return out

    def h(key: str) -> bytes:
        return hashlib.blake2b(key.encode(), digest_size=8).digest()

    qrels = [line.split("\t") for line in
             (beir / "qrels" / "test.tsv").read_text().splitlines()[1:] if line.count("\t") >= 2]
    qids = sorted({q for q, _, _ in qrels}, key=h)[:n_queries]
    keep_q = set(qids)
    judged = {d for q, d, _ in qrels if q in keep_q}
    rows = [(json.loads(line)["_id"], line)
            for line in (beir / "corpus.jsonl").read_text().splitlines() if line.strip()]
    rest = sorted((r for r in rows if r[0] not in judged), key=lambda r: h(r[0]))
    keep = judged | {i for i, _ in rest[: max(0, n_docs - len(judged))]}
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "queries.jsonl").write_text("".join(
        line + "\n" for line in (beir / "queries.jsonl").read_text().splitlines()
        if line.strip() and json.loads(line)["_id"] in keep_q))
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        "\t".join(r) + "\n" for r in qrels if r[0] in keep_q))
    tmp = out / "corpus.jsonl.tmp"
    tmp.write_text("".join(line + "\n" for i, line in rows if i in keep))
    tmp.rename(out / "corpus.jsonl")
    return out


def run_variant(name: str, args: argparse.Namespace, beir_eval: Path) -> dict:
    from ctxvec.config import load_config
    from ctxvec.evaluate.run import run_evaluate
    from ctxvec.ingest.snapshot import load_snapshot, run_ingest
    from ctxvec.stages import pipeline
    from ctxvec.workspace import Workspace

    base, step, _ = CHECKPOINTS.get(name, (name, None, ""))
    what, overrides = VARIANTS[base]
    sets = [f"ingest.sources=[{args.corpus / 'corpus.jsonl'}]", f"evaluate.retrieval={beir_eval}",
            f"evaluate.sts={STS_DEV if STS_DEV.is_file() else 'null'}"]
    if args.steps is not None:
        sets.append(f"train.steps={args.steps}")
    sets += args.set
    cfg = load_config(RECIPE, [*sets, *overrides])
    ws = Workspace(args.home).ensure()
    t0 = time.time()
    try:
        snap = load_snapshot(ws)
    except Exception:  # a fresh workspace: ingest the corpus once
        snap = run_ingest(cfg, ws)
    tok = pipeline.tokenizer(cfg, ws, snap)
    mined = pipeline.mine(cfg, ws, snap) if cfg.wants_mined() else None
    t_mine = time.time() - t0
    packed = None
    if pipeline.needs_pack(cfg):
        from ctxvec.tokenizer.packing import run_pack

        packed = run_pack(cfg, ws, snap, tok)
    t1 = time.time()
    trained = pipeline.train(cfg, ws, snap, tok, packed, mined)
    t_train = time.time() - t1
    if step is not None:  # the run's checkpoint at `step`, as a model folder of its own
        what = CHECKPOINTS[name][2]
        trained = checkpoint_model(trained, step, args.home / "ablation" / f"{name}-model")
    # the label-free evaluation always reads the recipe's own mined folder (the default
    # adapt section), whichever data a variant trained on
    eval_mined = mined if mined is not None and not any(
        o.startswith("adapt.") for o in overrides) else pipeline.mine(
        load_config(RECIPE, sets), ws, snap)
    t2 = time.time()
    report = run_evaluate(cfg, ws, trained, eval_mined)
    t_eval = time.time() - t2
    m = report.metrics
    return {"variant": name, "what": what, "overrides": overrides, "steps": trained.steps,
            "ndcg_at_10": m.get("retrieval_ndcg_at_10"), "pseudo_ndcg_at_10": m.get(
                "pseudo_ndcg_at_10"), "pseudo_mrr_at_10": m.get("pseudo_mrr_at_10"),
            "sts_spearman": m.get("sts_spearman"), "mine_s": round(t_mine, 1),
            "train_s": round(t_train, 1), "eval_s": round(t_eval, 1),
            "mined_counts": mined.counts if mined else None, "skipped": report.skipped}


def checkpoint_model(trained, step: int, folder: Path):
    """A model folder holding the run's weights at ``step`` (its checkpoint) and the finished
    model's config and tokenizer; -> a TrainedModel record of it."""
    import shutil
    from dataclasses import replace

    ckpt = Path(trained.run_dir) / "checkpoints" / f"step-{step:08d}" / "model.safetensors"
    if not ckpt.is_file():
        raise SystemExit(f"no checkpoint at step {step}: {ckpt}")
    if not (folder / "model.safetensors").is_file():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(trained.model_dir, tmp)
        shutil.copyfile(ckpt, tmp / "model.safetensors")
        tmp.rename(folder)
    return replace(trained, run_dir=str(folder), model_dir=str(folder), steps=step)


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def table(results: list[dict], eval_docs: int | None, eval_queries: int | None) -> str:
    corpus = "full corpus" if eval_docs is None else (
        f"{eval_queries or 'all'} queries, {eval_docs} documents")
    lines = [f"| variant | what | nDCG@10 ({corpus}) | label-free nDCG@10 | STS-B dev | "
             "train s | eval s |", "|---|---|---|---|---|---|---|"]

    def f(v):
        return "—" if v is None else f"{v:.4f}"

    for r in results:
        lines.append(f"| {r['variant']} | {r['what']} | {f(r['ndcg_at_10'])} | "
                     f"{f(r['pseudo_ndcg_at_10'])} | {f(r['sts_spearman'])} | "
                     f"{r['train_s']:.0f} | {r['eval_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, default=BEIR, help="BEIR folder")
    ap.add_argument("--only", default=",".join([*VARIANTS, *CHECKPOINTS]),
                    help="comma-separated variants")
    ap.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--eval-docs", type=int, default=None,
                    help="score real retrieval over the judged documents and a sample up to N")
    ap.add_argument("--eval-queries", type=int, default=None,
                    help="with --eval-docs: only N of the test queries (a fixed hash sample)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override for every variant (e.g. adapt.eval_docs=1000)")
    args = ap.parse_args()
    if not (args.corpus / "corpus.jsonl").is_file():
        raise SystemExit(f"skipped: no BEIR corpus at {args.corpus} (see ../shared/data)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ["CTXVEC_HOME"] = str(args.home)
    args.home.mkdir(parents=True, exist_ok=True)
    state = args.home / "ablation"
    state.mkdir(exist_ok=True)
    beir_eval = args.corpus if args.eval_docs is None else judged_subset(
        args.corpus, args.home / f"eval-{args.eval_docs}-{args.eval_queries or 'all'}",
        args.eval_docs, args.eval_queries)
    results = []
    for name in args.only.split(","):
        done = state / f"{name}.json"
        if done.is_file():
            results.append(json.loads(done.read_text()))
            continue
        what = CHECKPOINTS[name][2] if name in CHECKPOINTS else VARIANTS[name][0]
        log_line(f"variant {name}: {what}")
        r = run_variant(name, args, beir_eval)
        r |= {"eval_docs": args.eval_docs, "eval_queries": args.eval_queries,
              "host": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg(),
              "date": dt.date.today().isoformat()}
        done.write_text(json.dumps(r, indent=2) + "\n")
        results.append(r)
        log_line(f"variant {name}: nDCG@10 {r['ndcg_at_10']}, label-free "
                 f"{r['pseudo_ndcg_at_10']}, STS {r['sts_spearman']}")
    print(table(results, args.eval_docs, args.eval_queries))
    scored = [r for r in results if r["ndcg_at_10"] is not None and
              r["pseudo_ndcg_at_10"] is not None]
    if len(scored) >= 3:
        rho = spearman([r["ndcg_at_10"] for r in scored],
                       [r["pseudo_ndcg_at_10"] for r in scored])
        print(f"\nSpearman(label-free nDCG@10, nDCG@10) over {len(scored)} variants: {rho:.3f}")


if __name__ == "__main__":
    main()
