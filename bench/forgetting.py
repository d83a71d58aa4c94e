"""The forgetting experiment: how much of what a model knew is lost when it is updated on a new
domain, and how much of that loss replay, L2-SP, EWC and distillation prevent.

    python bench/forgetting.py --home /tmp/ctxvec-forgetting          # full: ~30 min on 2 cores
    python bench/forgetting.py --quick                                # smoke test: ~3 min

1. Base model (domain A, "old"): ``ctxvec run --config configs/continual-experiment.yaml`` in the
   fresh workspace ``--home``: a BERT-tiny learns Wikipedia (the first six shards) from scratch
   with masked-LM, and is registered as version 1 (champion) with its embeddings and index.
2. Domain B ("new"): ``ctxvec ingest`` adds ArguAna's debate arguments to the same workspace.
3. One challenger per condition, every one from version 1 (``continual.parent=1``), with the
   library's own steps: ``plan_update -> split_domains -> train_challenger -> evaluate_pair ->
   decide`` (nothing is registered or deployed). Same steps, lr and seed for all; they differ only
   in replay, regulariser and distillation. L2-SP's and EWC's weights are swept alone; of the
   weights the gate promotes, the one that learnt most of B is then combined with replay.
4. A table on stdout, ``docs/forgetting.md`` and ``docs/img/forgetting.png`` (with ``--quick``:
   ``forgetting.md`` and ``forgetting.png`` inside ``--home``, so a smoke test never overwrites
   the real results).

Every finished stage is kept under ``<home>/forgetting/``: a re-run with the same ``--home``
resumes where the last one stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import loadavg  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "continual-experiment.yaml"
DATA = ROOT.parent / "shared" / "data"
ARGUANA = DATA / "beir-arguana" / "corpus.jsonl"
WIKI = DATA / "enwiki-wikiextractor" / "AA"
MARKER = "forgetting"  # <home>/forgetting/ holds this script's state

# (name, label, continual overrides). "{l2sp}" / "{ewc}" stand for the swept weight chosen.
BASE_CONDITIONS = [
    ("naive", "naive (no replay, no penalty)",
     {"replay_ratio": 0.0, "regularizer": "none", "reg_weight": 0.0}),
    ("replay", "replay 0.5",
     {"replay_ratio": 0.5, "regularizer": "none", "reg_weight": 0.0}),
]
COMBINED_CONDITIONS = [
    ("replay+l2sp", "replay 0.5 + L2-SP",
     {"replay_ratio": 0.5, "regularizer": "l2sp", "reg_weight": "{l2sp}"}),
    ("replay+ewc", "replay 0.5 + EWC",
     {"replay_ratio": 0.5, "regularizer": "ewc", "reg_weight": "{ewc}"}),
    # distillation's loss (1 - cosine to the stored vectors) is ~2e-3, tiny next to an MLM loss
    # of ~6.5; whether weight 1 is enough depends on what is measured, so three weights
    *[(f"replay+distill@{w:g}", f"replay 0.5 + distillation {w:g}",
       {"replay_ratio": 0.5, "regularizer": "none", "reg_weight": 0.0, "distill_weight": w})
      for w in (1.0, 30.0, 300.0)],
]

FULL = {
    "base": [],  # the recipe as it is: 1,000 steps on wiki_00..05
    "new_docs": 3500,
    "update": {"steps": 250, "lr": 1.0e-3, "warmup_steps": 20},
    "eval_docs": 300,
    "sweep": {"l2sp": [0.01, 0.1, 1.0], "ewc": [0.01, 0.1, 1.0]},
}
QUICK = {
    "base": ["train.steps=120", "train.warmup_steps=20", "train.eval_every=60",
             "train.checkpoint_every=null", "train.log_every=20",
             "ingest.sources=" + json.dumps([str(WIKI / "wiki_00.gz")])],
    "new_docs": 600,
    "update": {"steps": 20, "lr": 1.0e-3, "warmup_steps": 5},
    "eval_docs": 60,
    "sweep": {"l2sp": [0.1], "ewc": [0.1]},
}

log = logging.getLogger("forgetting")


# --- small helpers ---------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def save_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, default=str) + "\n")


CONSOLE = sys.stderr  # progress lines; the library's own output goes to <home>/forgetting/


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=CONSOLE, flush=True)


@contextlib.contextmanager
def quiet(home: Path):
    """The library's progress bars and warnings go to <home>/forgetting/log.txt."""
    with (home / MARKER / "log.txt").open("a") as f, contextlib.redirect_stderr(f):
        yield


def hardware() -> dict:
    out = {"python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        out["cpu"] = fields.get("Model name", "?").strip()
        out["cpus"] = fields.get("CPU(s)", "?").strip()
        flags = fields.get("Flags", "")
        out["isa"] = ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16")
                               if f in flags.split())
    except OSError:
        out["cpu"] = platform.processor() or "?"
    try:
        mem = next(x for x in Path("/proc/meminfo").read_text().splitlines()
                   if x.startswith("MemTotal"))
        out["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    import torch

    out["torch"] = torch.__version__
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return out


def stamp(res: dict, t0: float) -> dict:
    """When a stage ran and how loaded the machine was: the report's date and wall time come
    from these, so a re-run that reuses every stage still reports the run that measured them."""
    return {**res, "t_start": t0, "t_end": time.time(), "load_end": loadavg(), "fresh": True}


def reused(res: dict) -> dict:
    return {**res, "fresh": False}


def cli(home: Path, args: list[str], threads: int) -> dict:
    """``ctxvec ARGS --json`` in the workspace ``home``; the parsed JSON."""
    env = {**os.environ, "CTXVEC_HOME": str(home), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "ctxvec.cli", "--log-level", "WARNING", *args, "--json"]
    log.info("$ %s", shlex.join(cmd))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    with (home / MARKER / "cli.log").open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n{out.stderr}\n")
    if out.returncode:
        sys.exit(f"command failed ({out.returncode}): {shlex.join(cmd)}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the stages ------------------------------------------------------------------------------


def base_run(home: Path, plan: dict, threads: int) -> dict:
    state = home / MARKER / "base.json"
    if state.is_file():
        say("base model: done already (reusing version 1)")
        return reused(json.loads(state.read_text()))
    say("base model: ctxvec run (ingest A, tokenizer, pack, train, evaluate, register, embed, "
        "index, promote)")
    sets = [*plan["base"], f"train.threads={threads}"]
    t0, load0 = time.time(), loadavg()
    out = cli(home, ["run", "--config", str(RECIPE), *[x for s in sets for x in ("--set", s)]],
              threads)
    wall = time.time() - t0
    rows = [json.loads(x) for x in
            (Path(out["train"]["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    base = stamp({"summary": out, "wall_s": wall, "overrides": sets, "curve": rows,
                  "load_start": load0, "hardware": hardware(), "argv": sys.argv[1:]}, t0)
    save_json(state, base)
    say(f"base model: {wall:.0f} s, {out['train']['steps']} steps, held-out MLM loss "
        f"{out['train']['eval_loss']:.3f}")
    return base


def ingest_new(home: Path, plan: dict, threads: int) -> dict:
    state = home / MARKER / "ingest_new.json"
    if state.is_file():
        return reused(json.loads(state.read_text()))
    say(f"domain B: ctxvec ingest {ARGUANA.name} (at most {plan['new_docs']} documents)")
    sets = ["ingest.sources=" + json.dumps([str(ARGUANA)]), "ingest.id_field=_id",
            f"ingest.max_docs={plan['new_docs']}"]
    t0 = time.time()
    out = cli(home, ["ingest", "--config", str(RECIPE), *[x for s in sets for x in ("--set", s)]],
              threads)
    res = stamp({"summary": out, "wall_s": time.time() - t0, "overrides": sets}, t0)
    save_json(state, res)
    return res


def update_overrides(plan: dict, continual: dict, threads: int) -> list[str]:
    u = plan["update"]
    sets = [*plan["base"], 'continual.parent="1"', f"continual.eval_docs={plan['eval_docs']}",
            f"train.steps={u['steps']}", f"train.lr={u['lr']}",
            f"train.warmup_steps={u['warmup_steps']}", "train.eval_every=null",
            "train.checkpoint_every=null", f"train.log_every={max(1, u['steps'] // 20)}",
            f"train.threads={threads}"]
    return sets + [f"continual.{k}={v}" for k, v in continual.items()]


def run_condition(home: Path, name: str, label: str, sets: list[str]) -> dict:
    """plan_update -> split_domains -> train_challenger -> evaluate_pair -> decide."""
    from ctxvec.config import load_config
    from ctxvec.continual.evaluate import evaluate_pair, unmeasured
    from ctxvec.continual.gate import decide
    from ctxvec.continual.plan import plan_update, split_domains
    from ctxvec.continual.train import train_challenger
    from ctxvec.workspace import Workspace, read_json

    state = home / MARKER / "conditions" / f"{name}.json"
    cfg = load_config(RECIPE, sets)
    ws = Workspace(home)
    if state.is_file():
        done = json.loads(state.read_text())
        if done["overrides"] == sets:
            say(f"{name}: done already")
            return reused(done)
    say(f"{name}: training from version 1 ({label})")
    t0 = time.time()
    with quiet(home):
        plan = plan_update(cfg, ws)
        if plan.status != "ready":
            sys.exit(f"{name}: the update has nothing new to learn ({plan.to_dict()})")
        domains = split_domains(cfg, plan)
        t1 = time.time()
        trained = train_challenger(cfg, ws, plan, domains)
        t2 = time.time()
        pair = evaluate_pair(cfg, ws, plan, domains, trained)
        champion, report = pair.champion, pair.challenger
        drift = {"champion": embedding_drift(ws, plan, domains, plan.parent_dir),
                 "champion_dropout": embedding_drift(ws, plan, domains, plan.parent_dir, True),
                 "challenger": embedding_drift(ws, plan, domains, trained.model_dir)}
        t3 = time.time()
    decision = decide(cfg.continual.gate, champion, report.metrics,
                      unmeasured=unmeasured(cfg.evaluate, pair))
    manifest = read_json(Path(trained.run_dir) / "manifest.json")
    rows = [json.loads(x) for x in
            (Path(trained.run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    res = {
        "name": name, "label": label, "overrides": sets, "key": plan.key,
        "run_dir": trained.run_dir, "steps": trained.steps, "tokens_seen": trained.tokens_seen,
        "final_loss": trained.final_loss, "data": manifest.get("data", {}),
        "regularizer_used": manifest.get("regularizer"),
        "continual": cfg.continual.model_dump(mode="json"),
        "domains": {k: len(getattr(domains, k)) for k in
                    ("old_train", "old_heldout", "new_train", "new_heldout")},
        "plan": {"new_docs": plan.new_docs, "old_docs": plan.old_docs},
        "champion": champion, "challenger": report.metrics, "decision": decision,
        "drift": drift,
        "curve": rows,
        "seconds": {"prepare": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2,
                    "total": t3 - t0},
    }
    res = stamp(res, t0)
    save_json(state, res)
    c = report.metrics
    say(f"{name}: {t3 - t0:.0f} s; old.mlm_loss {champion['old.mlm_loss']:.3f} -> "
        f"{c['old.mlm_loss']:.3f}, new.mlm_loss {champion['new.mlm_loss']:.3f} -> "
        f"{c['new.mlm_loss']:.3f}; gate: {'promote' if decision['promote'] else 'reject'}")
    return res


DRIFT_CHUNKS = 512


def embedding_drift(ws, plan, domains, model_dir: str, dropout: bool = False) -> float:
    """Mean 1 - cos between ``model_dir``'s vectors of 512 Wikipedia chunks (of the update's
    old training documents) and the vectors version 1 stored for them at embed time: how far the
    embedding space users search in moved. Version 1 itself scores ~0 (eval mode, fp32); with
    ``dropout`` (train mode, as the distillation loss sees the student) it does not."""
    import numpy as np
    import torch

    from ctxvec.continual.train import distill_examples
    from ctxvec.model.encoder import Encoder

    pairs = distill_examples(ws, plan, domains, DRIFT_CHUNKS, 12345)
    enc = Encoder.load(model_dir, device="cpu", precision="fp32")
    if dropout:
        enc.model.train()
        torch.manual_seed(0)
    a = enc.encode([t for t, _ in pairs])
    b = np.stack([v for _, v in pairs]).astype(np.float32)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.mean(1.0 - cos))


def mean_loss(r: dict) -> float:
    return (r["challenger"]["old.mlm_loss"] + r["challenger"]["new.mlm_loss"]) / 2


def pick_weight(points: list[tuple[float, dict]]) -> float:
    """The weight a user would keep: of those the gate promotes, the one that learnt most of the
    new domain (lowest new.mlm_loss); if the gate promotes none, the one that forgot least."""
    passed = [p for p in points if p[1]["decision"]["promote"]]
    if passed:
        return min(passed, key=lambda p: p[1]["challenger"]["new.mlm_loss"])[0]
    return min(points, key=lambda p: p[1]["challenger"]["old.mlm_loss"])[0]


# --- report ----------------------------------------------------------------------------------


def derived(results: list[dict]) -> list[dict]:
    """Per condition: forgetting (old-domain loss increase over the base), new-domain gain, and
    the share of the naive update's forgetting it prevents / of its gain it keeps."""
    base = results[0]["champion"]
    naive = next(r for r in results if r["name"] == "naive")["challenger"]
    f_naive = naive["old.mlm_loss"] - base["old.mlm_loss"]
    g_naive = base["new.mlm_loss"] - naive["new.mlm_loss"]
    rows = []
    for r in results:
        c = r["challenger"]
        forget = c["old.mlm_loss"] - base["old.mlm_loss"]
        gain = base["new.mlm_loss"] - c["new.mlm_loss"]
        rows.append({
            "name": r["name"], "label": r["label"], "c": c, "forget": forget, "gain": gain,
            "forget_rel": forget / base["old.mlm_loss"], "gain_rel": gain / base["new.mlm_loss"],
            "prevented": (1 - forget / f_naive) if f_naive > 0 else float("nan"),
            "kept_gain": gain / g_naive if g_naive > 0 else float("nan"),
            "promote": r["decision"]["promote"], "reason": r["decision"]["reason"],
            "train_s": r["seconds"]["train"], "data": r["data"], "r": r,
        })
    return rows


def setting(r: dict) -> str:
    c = r["continual"]
    parts = [f"replay {c['replay_ratio']:g}" if c["replay_ratio"] else "no replay"]
    if c["regularizer"] != "none" and c["reg_weight"] > 0:
        parts.append(f"{'L2-SP' if c['regularizer'] == 'l2sp' else 'EWC'} {c['reg_weight']:g}")
    if c["distill_weight"] > 0:
        parts.append(f"distill {c['distill_weight']:g}")
    return ", ".join(parts)


def pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.0f}%"


def table(results: list[dict]) -> str:
    base = results[0]["champion"]
    head = ("| condition | setting | old mlm_loss (Wikipedia) | forgetting | new mlm_loss "
            "(ArguAna) | new-domain gain | old halves_mrr | new halves_mrr | forgetting "
            "prevented | gain kept | old emb. drift | gate (tol. 0.02) | train s |")
    drift0 = results[0]["drift"]["champion"]
    lines = [head, "|" + "---|" * 13,
             f"| **base** (version 1, champion) | - | {base['old.mlm_loss']:.4f} | - | "
             f"{base['new.mlm_loss']:.4f} | - | {base['old.halves_mrr']:.4f} | "
             f"{base['new.halves_mrr']:.4f} | - | - | {drift0:.4f} | - | - |"]
    for d in derived(results):
        c = d["c"]
        lines.append(
            f"| {d['name']} | {setting(d['r'])} | {c['old.mlm_loss']:.4f} | "
            f"{d['forget']:+.4f} ({100 * d['forget_rel']:+.1f}%) | {c['new.mlm_loss']:.4f} | "
            f"{d['gain']:+.4f} ({100 * d['gain_rel']:+.1f}%) | {c['old.halves_mrr']:.4f} | "
            f"{c['new.halves_mrr']:.4f} | {pct(d['prevented'])} | {pct(d['kept_gain'])} | "
            f"{d['r']['drift']['challenger']:.4f} | {'promote' if d['promote'] else 'reject'} | "
            f"{d['train_s']:.0f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    base = results[0]["champion"]
    cmap = plt.get_cmap("tab20")
    colors = [cmap(k) for k in [*range(0, 20, 2), *range(1, 20, 2)]]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    specs = [("mlm_loss", "held-out MLM loss", "lower-left is better"),
             ("halves_mrr", "halves MRR", "upper-right is better")]
    for ax, (m, what, hint) in zip(axes, specs, strict=True):
        bx, by = base[f"new.{m}"], base[f"old.{m}"]
        ax.scatter([bx], [by], marker="*", s=280, color="black", zorder=4)
        for i, r in enumerate(results):
            c = r["challenger"]
            x, y = c[f"new.{m}"], c[f"old.{m}"]
            color = colors[i % len(colors)]
            ax.plot([bx, x], [by, y], color=color, alpha=0.3, lw=1)
            ax.scatter([x], [y], color=color, s=70, zorder=3, edgecolors="black",
                       linewidths=0.4, marker="o" if r["decision"]["promote"] else "X")
            ax.annotate(str(i + 1), (x, y), textcoords="offset points", xytext=(5, 4),
                        fontsize=8, color="black")
        if m == "mlm_loss":  # the gate's tolerance: old-domain loss up to 2% worse
            ax.axhline(by * 1.02, color="grey", ls=":", lw=1)
            ax.annotate("gate tolerance: old loss +2%", (0.01, by * 1.02), fontsize=7,
                        color="grey", xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(0, 3))
        ax.set_xlabel(f"new domain (ArguAna) {what}")
        ax.set_ylabel(f"old domain (Wikipedia) {what}")
        ax.set_title(f"{what}: {hint}", fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="*", color="black", ls="", markersize=12,
                      label="base (version 1)")]
    handles += [Line2D([], [], marker="o" if r["decision"]["promote"] else "X", ls="",
                       color=colors[i % len(colors)], markeredgecolor="black",
                       markeredgewidth=0.4, markersize=8, label=f"{i + 1}  {r['name']}")
                for i, r in enumerate(results)]
    handles += [Line2D([], [], marker="o", ls="", color="white", markeredgecolor="black",
                       label="gate promotes"),
                Line2D([], [], marker="X", ls="", color="white", markeredgecolor="black",
                       label="gate rejects")]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def discussion(results: list[dict]) -> list[str]:
    """Sentences computed from the measurements (nothing here is typed in)."""
    rows = {d["name"]: d for d in derived(results)}
    base = results[0]["champion"]
    n = rows["naive"]
    out = [
        f"- **The naive update forgets.** {n['r']['steps']} steps on ArguAna lower the "
        f"new-domain loss by {n['gain']:.3f} ({100 * n['gain_rel']:.1f}%) and raise the "
        f"Wikipedia loss by {n['forget']:.3f} ({100 * n['forget_rel']:+.1f}%, "
        f"{base['old.mlm_loss']:.3f} -> {n['c']['old.mlm_loss']:.3f}); the gate "
        f"{'promotes' if n['promote'] else 'rejects'} it"
        + ("" if n["promote"] else f" ({n['reason']})") + "."
    ]
    for name, d in rows.items():
        if name == "naive":
            continue
        verdict = ("prevents all of the naive update's forgetting (the old-domain loss ends "
                   "below the base)" if d["forget"] < 0 else
                   f"prevents {100 * d['prevented']:.0f}% of the naive update's forgetting")
        out.append(
            f"- **{d['name']}** ({setting(d['r'])}): {verdict}, and keeps "
            f"{100 * d['kept_gain']:.0f}% of its new-domain gain (new loss "
            f"{d['c']['new.mlm_loss']:.3f} vs {n['c']['new.mlm_loss']:.3f}); old halves_mrr "
            f"{d['c']['old.halves_mrr']:.3f} (base {base['old.halves_mrr']:.3f}, naive "
            f"{n['c']['old.halves_mrr']:.3f}); gate: {'promote' if d['promote'] else 'reject'}.")
    by_weight = {}
    for d in rows.values():
        c = d["r"]["continual"]
        if c["replay_ratio"] == 0 and c["regularizer"] != "none" and c["distill_weight"] == 0:
            by_weight.setdefault(c["reg_weight"], {})[c["regularizer"]] = d
    same = [(w, v["l2sp"], v["ewc"]) for w, v in sorted(by_weight.items()) if len(v) == 2]
    if same:
        out.append("- **L2-SP vs EWC at the same weight** (EWC's Fisher is scaled to mean 1, so "
                   "the total pull is the same; only where it pulls differs): " + "; ".join(
                       f"{w:g}: L2-SP prevents {100 * lp['prevented']:.0f}% and keeps "
                       f"{100 * lp['kept_gain']:.0f}% of the gain, EWC {100 * ew['prevented']:.0f}%"
                       f" and {100 * ew['kept_gain']:.0f}%" for w, lp, ew in same) + ".")

    def check(d: dict, metric: str) -> bool:
        return next((c["passed"] for c in d["r"]["decision"]["checks"]
                     if c["metric"] == metric), True)

    mrr_only = [d for d in rows.values()
                if check(d, "old.mlm_loss") and not check(d, "old.halves_mrr")]
    if mrr_only:
        out.append("- The gate rejects " + ", ".join(
            f"{d['name']} (old loss {100 * d['forget_rel']:+.1f}%, old halves_mrr "
            f"{100 * (d['c']['old.halves_mrr'] / base['old.halves_mrr'] - 1):+.1f}%)"
            for d in mrr_only) + " on old.halves_mrr alone: its old-domain loss is within the "
            "2% tolerance.")
    if n["c"]["old.halves_mrr"] >= base["old.halves_mrr"]:
        out.append(f"- old.halves_mrr does not track this forgetting: the naive update raises it "
                   f"({base['old.halves_mrr']:.4f} -> {n['c']['old.halves_mrr']:.4f}) while its "
                   f"old-domain loss worsens by {100 * n['forget_rel']:.1f}%.")
    out.append("- **Embedding drift** on Wikipedia chunks (1 - cos to version 1's stored "
               "vectors): " + ", ".join(f"{d['name']} {d['r']['drift']['challenger']:.4f}"
                                       for d in rows.values()) + ".")
    front = [d["name"] for d in rows.values() if not any(
        o["c"]["old.mlm_loss"] <= d["c"]["old.mlm_loss"]
        and o["c"]["new.mlm_loss"] <= d["c"]["new.mlm_loss"] and o is not d
        for o in rows.values())]
    behind = [d["name"] for d in rows.values() if d["name"] not in front]
    out.append("- Not beaten on both losses at once by any other condition (the trade-off "
               f"front, lower-left in the plot): {', '.join(front)}."
               + (f" Beaten on both by another condition: {', '.join(behind)}." if behind
                  else ""))
    best = min(rows.values(), key=lambda d: (d["c"]["old.mlm_loss"] + d["c"]["new.mlm_loss"]))
    promoted = [d["name"] for d in rows.values() if d["promote"]]
    out.append(f"- Lowest mean of the two domains' losses: **{best['name']}** "
               f"({(best['c']['old.mlm_loss'] + best['c']['new.mlm_loss']) / 2:.3f}; base "
               f"{(base['old.mlm_loss'] + base['new.mlm_loss']) / 2:.3f}). The default gate "
               f"(tolerance 0.02) would promote: {', '.join(promoted) or 'none of them'}.")
    return out


def report(plan: dict, args, base: dict, ingest: dict, results: list[dict], sweeps: dict,
           hw: dict, wall: float, loads: tuple[str, str], md: Path, png: Path) -> str:
    s, ing = base["summary"], ingest["summary"]
    curve = [r for r in base["curve"] if "eval/eval_loss" in r]
    first = next((r for r in base["curve"] if "loss" in r), None)
    vocab = s["tokenizer"]["vocab_size"]
    r0 = results[0]
    dom, cont = r0["domains"], r0["continual"]
    u = plan["update"]
    cmd = "python bench/forgetting.py " + " ".join(
        shlex.quote(a) for a in base.get("argv", sys.argv[1:]))
    staged = base["wall_s"] + ingest["wall_s"] + sum(r["seconds"]["total"] for r in results)
    updates_min = sum(r["seconds"]["total"] for r in results) / 60
    stages = [base, ingest, *results]
    state = Path(s["workspace"]) / MARKER
    ends = [x.get("t_end") or (state / f).stat().st_mtime for x, f in
            zip(stages, ["base.json", "ingest_new.json",
                         *[f"conditions/{r['name']}.json" for r in results]], strict=True)]
    start = base.get("t_start") or ends[0] - base["wall_s"]
    span = max(ends) - start
    if all(x["fresh"] for x in stages):
        how = f"one invocation, {wall / 60:.1f} min from start to report"
    elif not any(x["fresh"] for x in stages):
        how = (f"{span / 60:.1f} min from the first stage's start to the last one's end; this "
               "file was re-rendered from the stored results; on a fresh --home the command "
               "runs every stage")
    else:
        how = (f"stages from more than one invocation, {span / 60:.1f} min from the first "
               "stage's start to the last one's end")
    hw = base.get("hardware", hw)
    if not all(x["fresh"] for x in stages):
        loads = (base.get("load_start", "not recorded"),
                 results[-1].get("load_end", "not recorded"))
    heldout = ", ".join(f"{r['eval/eval_loss']:.3f} at step {r['step']}" for r in curve)
    champ_same = all(r["champion"] == r0["champion"] for r in results)
    distill_weights = ", ".join(f"{r['continual']['distill_weight']:g}" for r in results
                                if r["continual"]["distill_weight"] > 0) or "none"
    quick = " (**--quick smoke run**)" if args.quick else ""
    p = [
        "# Forgetting under a continual update (issue 6, item 6)",
        "How much of domain A does a model lose when it is updated on domain B, and how much of "
        "that loss do replay, L2-SP, EWC and distillation prevent? Every number below was "
        "measured by `bench/forgetting.py`, which writes this file.",
        "\n".join([
            f"- Date: {dt.datetime.fromtimestamp(start).strftime('%Y-%m-%d %H:%M')}{quick}",
            f"- Hardware: {hw.get('cpus', '?')} x {hw.get('cpu', '?')} ({hw.get('isa', '')}), "
            f"{hw.get('memory_gib', '?')} GiB RAM, GPU: {hw.get('gpu')}; Python {hw['python']}, "
            f"torch {hw['torch']}. The machine was shared with other work (load average "
            f"{loads[0]} at the start, {loads[1]} at the end); torch ran on "
            f"{base['overrides'][-1].split('=')[1]} thread(s).",
            f"- Command: `{cmd}`",
            f"- Wall time: {staged / 60:.1f} min in all: base run {base['wall_s'] / 60:.1f} min, "
            f"ingest of B {ingest['wall_s']:.0f} s, {len(results)} updates {updates_min:.1f} "
            f"min ({how}).",
        ]),
        "## Setup",
        "\n".join([
            f"- **Domain A (old): Wikipedia.** `configs/continual-experiment.yaml` ingests "
            f"{s['snapshot']['kept']} articles from the first shards of `enwiki-wikiextractor` "
            f"(page order; {s['snapshot']['duplicates']} duplicates and "
            f"{s['snapshot']['filtered']} empty stubs dropped).",
            f"- **Base model**: `ctxvec run` trains a WordPiece vocabulary of {vocab} tokens on "
            f"A, then a BERT-tiny from scratch (2 layers, hidden 128) with masked-LM: "
            f"{s['train']['steps']} steps of 32 x 128 tokens "
            f"({s['train']['tokens_seen'] / 1e6:.1f} M tokens). It is registered as version 1 "
            f"and promoted to champion, with embeddings ({s['embeddings']['rows']} chunks) and "
            f"an index. Its MLM loss on A: {math.log(vocab):.2f} (ln {vocab}) for a uniform "
            f"guess, {first['loss']:.3f} at the first logged step ({first['step']}); held-out "
            f"{heldout}.",
            f"- **Domain B (new): ArguAna** debate arguments: `ctxvec ingest` adds "
            f"{ing['kept']} of them ({ing['duplicates']} exact and {ing['near_duplicates']} "
            "near duplicates dropped) as a second snapshot of the same workspace.",
            f"- **Held-out sets** (`split_domains`: every {cont['heldout_every']}th document by "
            f"id hash, at most {cont['eval_docs']} per domain): {dom['old_heldout']} Wikipedia "
            f"and {dom['new_heldout']} ArguAna documents. The updates train on "
            f"{dom['new_train']} ArguAna documents "
            f"({r0['data'].get('mlm_new_sequences', '?')} sequences of 128 tokens) and replay "
            f"from {dom['old_train']} Wikipedia documents. The Wikipedia held-out documents "
            "were in the base model's training data (the base run trains on all of A); no "
            "model ever trained on the ArguAna ones.",
            f"- **Updates**: every condition starts from version 1 (`continual.parent=\"1\"`) "
            "and runs the library's `plan_update -> split_domains -> train_challenger -> "
            f"evaluate_pair -> decide` with the same {u['steps']} steps of 32 x 128 tokens, lr "
            f"{u['lr']:g} (cosine, {u['warmup_steps']} warm-up steps), seed 0. Replay 0.5: half "
            "of each MLM batch is earlier (Wikipedia) sequences. L2-SP pulls every weight "
            "towards version 1's; EWC weighs that pull by a diagonal Fisher on Wikipedia "
            "batches (scaled to mean 1); distillation matches version 1's stored chunk "
            "embeddings of Wikipedia (1 - cosine; weights "
            f"{distill_weights}). The weights of L2-SP and EWC "
            "were swept alone (below the table); the chosen one is combined with replay.",
            "- **Metrics** (`evaluate_pair`: the same held-out documents and MLM masks for "
            "every model): `old.mlm_loss` / `new.mlm_loss`: masked-LM cross-entropy on held-out "
            "Wikipedia / ArguAna; `halves_mrr`: each held-out document's second half found "
            "from its first half among all of them (mean reciprocal rank); *old emb. drift*: "
            f"mean 1 - cosine between the model's vectors of {DRIFT_CHUNKS} Wikipedia chunks "
            "and the ones version 1 stored for them (what distillation holds on to; it is "
            f"{r0['drift']['champion_dropout']:.4f} for version 1 itself with dropout on, as "
            "the distillation loss sees the student during training). **Forgetting** = "
            "old-domain loss minus the base's; **new-domain gain** = the base's new-domain loss "
            "minus the challenger's; *forgetting prevented* = 1 - forgetting / naive "
            "forgetting; *gain kept* = gain / naive gain. *Gate* is `decide` with the default "
            "tolerance: every old-domain metric may worsen by at most 2%, the new-domain loss "
            "must improve."
            + ("" if champ_same else
               " **Warning: the champion's metrics differed between conditions.**"),
        ]),
        "## Results",
        table(results),
        f"![old- vs new-domain held-out loss and halves MRR per condition]"
        f"({os.path.relpath(png, md.parent)})",
        "Left: held-out MLM loss on the old domain against the new; each numbered point is one "
        "update from the base (star), a cross where the gate rejects it; the dotted line is "
        "the gate's 2% tolerance. Right: the same for halves MRR (higher is better).",
    ]
    sweep_lines = []
    for reg, pts in sweeps.items():
        if len(pts) > 1:
            sweep_lines.append(f"- {'L2-SP' if reg == 'l2sp' else 'EWC'}: " + "; ".join(
                f"weight {w:g}: old {r['challenger']['old.mlm_loss']:.4f}, new "
                f"{r['challenger']['new.mlm_loss']:.4f} "
                f"({'promoted' if r['decision']['promote'] else 'rejected'})"
                for w, r in pts) + f" -> **{pick_weight(pts):g}**")
    if sweep_lines:
        p += ["Weight sweeps (each penalty alone, no replay). The weight combined with replay "
              "is, of those the gate promotes, the one with the lowest new-domain loss (the "
              "most learnt within the tolerance); if the gate promotes none, the one with the "
              "lowest old-domain loss:", "\n".join(sweep_lines)]
    p += ["## Discussion",
          "What each method holds on to: replay keeps training on the old domain itself (half "
          "of every batch), so it protects whatever the MLM loss measures there, at the price "
          "of half the new-domain data per step. L2-SP and EWC hold the weights near version "
          "1's, all alike (L2-SP) or where the Fisher of the Wikipedia MLM loss is large (EWC); "
          "they slow every change, the useful ones included. Distillation holds only the "
          "pooled chunk embeddings of old documents, not the MLM head: it is aimed at the "
          "embedding space users search in rather than at the MLM loss. What the measurements "
          "say:",
          "\n".join(discussion(results)),
          "Caveats: one seed, one step budget and one learning rate, so there are no error "
          "bars: small differences between conditions (a few thousandths of a nat, a few "
          "points of a percentage) should not be read as rankings. The base model is "
          "small and far from converged, so absolute losses are high; what the experiment "
          "shows is the direction and relative size of the effects. halves_mrr of a "
          "from-scratch BERT-tiny (no sentence objective) is a weak, noisy signal. Replay and "
          "the penalties change what a fixed number of steps can learn of B, so their cost "
          "shows as a smaller new-domain gain at the same budget."]
    return "\n\n".join(p) + "\n"


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--home", type=Path, default=None,
                    help="The experiment's workspace: a fresh (absent or empty) folder, or one "
                    "this script made, which it resumes (default: /tmp/ctxvec-forgetting, "
                    "with --quick /tmp/ctxvec-forgetting-quick).")
    ap.add_argument("--quick", action="store_true",
                    help="Smoke test: 1 shard, 120 base steps, 20 update steps (~3 min).")
    ap.add_argument("--fresh", action="store_true",
                    help="Delete --home first (only if this script made it).")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine two threads "
                    "spin-wait on each other and run 5x slower).")
    ap.add_argument("--md", type=Path, default=None, help="Report (default docs/forgetting.md).")
    ap.add_argument("--png", type=Path, default=None,
                    help="Plot (default docs/img/forgetting.png).")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    home = (args.home or Path("/tmp/ctxvec-forgetting" + ("-quick" if args.quick else ""))
            ).resolve()
    md = (args.md or (home / "forgetting.md" if args.quick else ROOT / "docs/forgetting.md"))
    png = (args.png or (home / "forgetting.png" if args.quick else
                        ROOT / "docs/img/forgetting.png"))
    md, png = md.resolve(), png.resolve()
    if args.fresh and home.exists():
        if not (home / MARKER).is_dir():
            sys.exit(f"--fresh: {home} was not made by this script; not deleting it")
        shutil.rmtree(home)
    if home.exists() and any(home.iterdir()) and not (home / MARKER).is_dir():
        sys.exit(f"{home} is not empty and not a forgetting workspace: give a fresh --home")
    (home / MARKER).mkdir(parents=True, exist_ok=True)
    for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS",
                "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        os.environ.setdefault(var, "1")
    os.environ["CTXVEC_HOME"] = str(home)
    logging.basicConfig(level=logging.INFO, filename=home / MARKER / "log.txt",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass

    t0, load0, hw = time.time(), loadavg(), hardware()
    base = base_run(home, plan, args.threads)
    ingest = ingest_new(home, plan, args.threads)
    results, sweeps = [], {}
    for name, label, cont in BASE_CONDITIONS:
        results.append(run_condition(home, name, label,
                                     update_overrides(plan, cont, args.threads)))
    chosen = {}
    for reg, weights in plan["sweep"].items():
        pts = []
        for w in weights:
            name = reg if len(weights) == 1 else f"{reg}@{w:g}"
            label = f"{'L2-SP' if reg == 'l2sp' else 'EWC'} {w:g}"
            r = run_condition(home, name, label, update_overrides(
                plan, {"replay_ratio": 0.0, "regularizer": reg, "reg_weight": w}, args.threads))
            pts.append((w, r))
            results.append(r)
        chosen[reg] = pick_weight(pts)
        sweeps[reg] = pts
        if len(pts) > 1:
            say(f"{reg}: weight {chosen[reg]:g} chosen for the combination with replay")
    for name, label, cont in COMBINED_CONDITIONS:
        cont = {k: (float(v.format(**chosen)) if isinstance(v, str) and "{" in v else v)
                for k, v in cont.items()}
        label = label + ("" if "reg_weight" not in cont or not cont["reg_weight"]
                         else f" {cont['reg_weight']:g}")
        results.append(run_condition(home, name, label,
                                     update_overrides(plan, cont, args.threads)))
    wall = time.time() - t0
    title = (f"BERT-tiny: Wikipedia -> ArguAna, {plan['update']['steps']} update steps"
             + (" (quick)" if args.quick else ""))
    plot(results, png, title)
    text = report(plan, args, base, ingest, results, sweeps, hw, wall, (load0, loadavg()), md,
                  png)
    atomic_write(md, text)
    print(table(results))
    print()
    print("\n".join(discussion(results)))
    print(f"\nwall time {wall / 60:.1f} min; wrote {md} and {png}")


if __name__ == "__main__":
    main()
