"""How far can any measure agree with real nDCG@10 on these models? The noise ceiling of the
label-free measure's rank agreement, from per-query scores.

``bench/adapt_ablation.py`` ranks a dozen models by real nDCG@10 (the BEIR test queries) and by
the label-free measure (held-out pseudo-queries) and reports the Spearman correlation of the two
rankings. Most of those models are within a point or two of each other, so part of any
disagreement is sampling noise in one or both measures, not a fault of the label-free one. This
bench puts a figure on that:

1. every model folder is scored again, keeping the score of every query (real nDCG@10 over the
   ablation's evaluation corpus; label-free nDCG@10 over the recipe's held-out pseudo-queries);
   the per-query scores are kept in ``<home>/reliability/<variant>.npz`` (a re-run resumes);
2. **real against real**: the test queries split at random into two halves, the models ranked on
   each half, Spearman between the halves (median over --splits splits): how well the labels
   agree with *themselves* on another set of queries of half the size. The same for the
   label-free measure;
3. **bootstrap** of the observed agreement: queries of both measures resampled with
   replacement, Spearman(label-free, real) each time: its median and 90% interval;
4. **pairs the labels can tell apart**: a paired bootstrap over the test queries for every pair
   of models; among the pairs whose real nDCG@10 difference excludes 0 at 95%, the share the
   label-free measure orders the same way. This is the question a gate asks.

    python bench/adapt_reliability.py --home /tmp/ctxvec-ablation --eval-docs 3000

``--label-free-only --sizes 411,800`` asks a cheaper question, from the label-free side alone
(the real nDCG@10 is each variant's figure in the ablation's table): how the rank agreement
depends on the number of held-out pseudo-queries. The models are ranked on random subsets of
``n`` of the queries for each size (and on all of them), and the Spearman with the real ranking
is reported (median and 90% interval over ``--splits`` subsets). Scoring only the pseudo-queries
costs a third of the full run; its per-query scores go to ``<variant>.label-free.npz``.

``--home`` is the ablation's workspace (its ``ablation/*.json`` name the variants; their model
folders are found from the run manifests); ``--eval-docs`` the ablation's own value.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from adapt_ablation import BEIR  # noqa: E402

NDCG_K = 10


def model_folders(home: Path) -> dict[str, Path]:
    """variant -> its model folder: the one whose ``evaluation.json`` (written by the pipeline's
    evaluate stage beside the model) holds the variant's recorded nDCG@10 and label-free
    nDCG@10, among ``<home>/runs/*/model`` and ``<home>/ablation/*-model``."""
    folders = [*(home / "runs").glob("*/model"), *(home / "ablation").glob("*-model")]
    recorded = {}
    for f in folders:
        ev = f / "evaluation.json" if (f / "evaluation.json").is_file() else (
            f.parent / "evaluation.json")
        if ev.is_file() and (f / "model.safetensors").is_file():
            m = json.loads(ev.read_text())["metrics"]
            recorded[f] = (m.get("retrieval_ndcg_at_10"), m.get("pseudo_ndcg_at_10"))
    found: dict[str, Path] = {}
    for done in sorted((home / "ablation").glob("*.json")):
        r = json.loads(done.read_text())
        key = (r["ndcg_at_10"], r["pseudo_ndcg_at_10"])
        match = [f for f, got in recorded.items() if got == key]
        if len(match) == 1:
            found[r["variant"]] = match[0]
    return found


def per_query_ndcg(encoder, doc_ids: list[str], doc_texts: list[str], query_texts: list[str],
                   qrels: dict[str, dict[str, int]]) -> np.ndarray:
    """Exact dense search of the queries (ids: ``qrels``' keys, in order) over the documents ->
    each query's nDCG@10, as ``retrieval_metrics`` scores it."""
    from ctxvec.evaluate.retrieval import exact_search, retrieval_metrics

    docs = encoder.encode(doc_texts, batch_size=64, progress=True)
    queries = encoder.encode(query_texts, batch_size=64, progress=True)
    qids = list(qrels)
    ranked = exact_search(queries, docs, qids, doc_ids, NDCG_K)
    return np.array([retrieval_metrics({q: ranked.get(q, [])}, {q: qrels[q]})["ndcg@10"]
                     for q in qids])


def per_query_real(encoder, beir) -> np.ndarray:
    """The BEIR test queries, in sorted id order."""
    text = dict(zip(beir.query_ids, beir.query_texts, strict=True))
    qrels = {q: beir.qrels[q] for q in sorted(beir.qrels)}
    return per_query_ndcg(encoder, beir.doc_ids, beir.doc_texts, [text[q] for q in qrels],
                          qrels)


def per_query_pseudo(encoder, folder: Path) -> np.ndarray:
    """The held-out pseudo-queries, in file order; each has one relevant document, its own."""
    from ctxvec.evaluate.pseudo import read_pseudo

    queries, relevant, doc_ids, doc_texts = read_pseudo(folder)
    qrels = {f"pq:{i}": {doc: 1} for i, doc in enumerate(relevant)}
    return per_query_ndcg(encoder, doc_ids, doc_texts, queries, qrels)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def split_half(scores: np.ndarray, rng: np.random.Generator, splits: int) -> list[float]:
    """scores: (models, queries) -> Spearman between the model rankings on two random halves."""
    n = scores.shape[1]
    out = []
    for _ in range(splits):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2:]
        out.append(spearman(scores[:, a].mean(1), scores[:, b].mean(1)))
    return out


def by_query_count(lf: np.ndarray, real: np.ndarray, sizes: list[int],
                   rng: np.random.Generator, splits: int) -> list[str]:
    """lf: (models, queries) label-free scores; real: (models,) real nDCG@10 -> a line per size:
    Spearman(label-free ranking on ``n`` random queries, real ranking), median and 90%."""
    q = np.quantile
    out = []
    for n in sizes:
        if n >= lf.shape[1]:
            continue
        rho = [spearman(lf[:, rng.choice(lf.shape[1], n, replace=False)].mean(1), real)
               for _ in range(splits)]
        out.append(f"{n} queries: Spearman median {q(rho, .5):.3f} "
                   f"(90%: {q(rho, .05):.3f}..{q(rho, .95):.3f})")
    out.append(f"all {lf.shape[1]} queries: Spearman {spearman(lf.mean(1), real):.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, required=True, help="the ablation's workspace")
    ap.add_argument("--eval-docs", type=int, default=None, help="the ablation's --eval-docs")
    ap.add_argument("--splits", type=int, default=2000, help="random half splits / resamples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label-free-only", action="store_true",
                    help="score only the pseudo-queries; rank agreement by query count")
    ap.add_argument("--sizes", default="411", help="with --label-free-only: query counts")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ["CTXVEC_HOME"] = str(args.home)
    from ctxvec.evaluate.retrieval import read_beir
    from ctxvec.model.encoder import Encoder

    beir_dir = args.home / f"eval-{args.eval_docs}-all" if args.eval_docs else BEIR
    beir = read_beir(beir_dir)
    folders = model_folders(args.home)
    results = {r["variant"]: r for r in (json.loads(p.read_text())
                                         for p in (args.home / "ablation").glob("*.json"))}
    # the label-free measure reads the recipe's own mined folder, whatever a variant trained on
    # (as adapt_ablation.py scores it): the one of the runs that left the adapt section alone
    mined = {json.loads((f.parent / "manifest.json").read_text())["mined"]
             for name, f in folders.items() if (f.parent / "manifest.json").is_file()
             and not any(o.startswith("adapt.") for o in results[name]["overrides"])}
    if len(mined) != 1:
        raise SystemExit(f"expected one mined folder among the runs, found {mined}")
    pseudo_dir = Path(mined.pop())
    state = args.home / "reliability"
    state.mkdir(exist_ok=True)
    names = [n for n in results if n in folders]
    print(f"{len(names)} models with a folder: {', '.join(names)}; "
          f"missing: {sorted(set(results) - set(names)) or 'none'}", flush=True)
    if args.label_free_only:
        lf = []
        for name in names:
            cache = state / f"{name}.label-free.npz"
            if not cache.is_file():
                t0 = time.time()
                enc = Encoder.load(folders[name], device="cpu", precision="fp32")
                np.savez(cache, pseudo=per_query_pseudo(enc, pseudo_dir))
                print(f"{name}: scored in {time.time() - t0:.0f} s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
            lf.append(np.load(cache)["pseudo"])
        lf = np.stack(lf)
        real = np.array([results[n]["ndcg_at_10"] for n in names])
        for i, n in enumerate(names):  # the re-scored mean must be the table's figure
            print(f"{n}: label-free {results[n]['pseudo_ndcg_at_10']:.4f} (table), "
                  f"{lf[i].mean():.4f} (re-scored)")
        print(f"\n{len(names)} models, {lf.shape[1]} held-out pseudo-queries, {args.splits} "
              f"subsets each, seed {args.seed}")
        for line in by_query_count(lf, real, [int(n) for n in args.sizes.split(",")],
                                   np.random.default_rng(args.seed), args.splits):
            print(line)
        ll = split_half(lf, np.random.default_rng(args.seed), args.splits)
        print(f"label-free vs label-free, two random halves: median {np.quantile(ll, .5):.3f}")
        print(f"host {platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
        return
    real, lf = [], []
    for name in names:
        cache = state / f"{name}.npz"
        if not cache.is_file():
            t0 = time.time()
            enc = Encoder.load(folders[name], device="cpu", precision="fp32")
            r, p = per_query_real(enc, beir), per_query_pseudo(enc, pseudo_dir)
            np.savez(cache, real=r, pseudo=p)
            print(f"{name}: scored in {time.time() - t0:.0f} s (load {os.getloadavg()[0]:.1f})",
                  flush=True)
        z = np.load(cache)
        real.append(z["real"])
        lf.append(z["pseudo"])
    real, lf = np.stack(real), np.stack(lf)
    rng = np.random.default_rng(args.seed)

    print("\n| variant | real nDCG@10 (table) | real, re-scored | label-free (table) | "
          "label-free, re-scored |\n|---|---|---|---|---|")
    for i, n in enumerate(names):
        print(f"| {n} | {results[n]['ndcg_at_10']:.4f} | {real[i].mean():.4f} | "
              f"{results[n]['pseudo_ndcg_at_10']:.4f} | {lf[i].mean():.4f} |")
    observed = spearman(lf.mean(1), real.mean(1))
    rr = split_half(real, rng, args.splits)
    ll = split_half(lf, rng, args.splits)
    boot = []
    for _ in range(args.splits):
        a = rng.integers(0, real.shape[1], real.shape[1])
        b = rng.integers(0, lf.shape[1], lf.shape[1])
        boot.append(spearman(lf[:, b].mean(1), real[:, a].mean(1)))
    q = np.quantile
    print(f"\n{len(names)} models; {real.shape[1]} test queries, {lf.shape[1]} held-out "
          f"pseudo-queries; {args.splits} splits/resamples, seed {args.seed}")
    print(f"Spearman(label-free, real), observed: {observed:.3f}; bootstrap median "
          f"{q(boot, .5):.3f}, 90% interval {q(boot, .05):.3f}..{q(boot, .95):.3f}")
    print(f"real vs real, two random halves of the test queries: median {q(rr, .5):.3f} "
          f"(90%: {q(rr, .05):.3f}..{q(rr, .95):.3f})")
    print(f"label-free vs label-free, two random halves: median {q(ll, .5):.3f} "
          f"(90%: {q(ll, .05):.3f}..{q(ll, .95):.3f})")

    # pairs the labels tell apart (paired bootstrap over the test queries, 95%)
    idx = [rng.integers(0, real.shape[1], real.shape[1]) for _ in range(args.splits)]
    sep = agree = 0
    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            d = real[i] - real[j]
            diffs = np.array([d[k].mean() for k in idx])
            lo, hi = q(diffs, .025), q(diffs, .975)
            if lo > 0 or hi < 0:
                sep += 1
                same = np.sign(d.mean()) == np.sign(lf[i].mean() - lf[j].mean())
                agree += bool(same)
                if not same:
                    rows.append(f"{names[i]} vs {names[j]}: real {d.mean():+.4f}, label-free "
                                f"{lf[i].mean() - lf[j].mean():+.4f}")
    total = len(names) * (len(names) - 1) // 2
    print(f"pairs of models: {total}; told apart by the labels at 95%: {sep}; ordered the "
          f"same way by the label-free measure: {agree} of {sep}")
    for r in rows:
        print("  disagrees:", r)
    print(f"host {platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()}")


if __name__ == "__main__":
    main()
