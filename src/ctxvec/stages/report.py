"""What a run did, as Markdown: the stage counts and evaluation metrics of a pipeline run, the
gate's decision of a continual update, and where its MLflow run and model version are.

The Prefect flows (``flows/observe.py``) publish these as artifacts of each flow run, so the
Prefect UI shows the work and not only state changes. The functions here are pure: they read
the summaries ``run_pipeline`` and ``run_continual`` return (the JSON ``ctxvec run --json`` and
``ctxvec update --json`` print) and return text, so they are tested without Prefect.

A tracking URI can carry a password (``postgresql://user:secret@host/db``): it is never written
into the text (``redact``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# --- Markdown helpers -------------------------------------------------------------------------


def cell(value: Any) -> str:
    """One table cell: no pipe or newline may break the row."""
    return " ".join(str(value).split()).replace("|", "\\|")


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: Any) -> str:
    """A count with thousands separators, a float to 4 decimals, anything else as it is."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from ``parts``: the same
    parts give the same key, so each run adds a version of the same artifact."""
    return "-".join(p for p in (re.sub(r"[^a-z0-9]+", "-", x.lower()).strip("-")
                                for x in parts) if p)


# --- the pipeline ------------------------------------------------------------------------------


def _ingest(snap: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Two short rows (Prefect's UI does not wrap table cells): what was kept, what was not."""
    if not snap["created"]:
        return [("ingest", f"nothing new; corpus {number(snap['corpus_docs'])} documents")]
    return [("ingest", f"kept {number(snap['kept'])} of {number(snap['read'])} read; corpus "
                       f"{number(snap['corpus_docs'])} documents"),
            ("ingest: not kept", f"{number(snap['duplicates'])} duplicates, "
                                 f"{number(snap['near_duplicates'])} near-duplicates, "
                                 f"{number(snap['filtered'])} filtered, "
                                 f"{number(snap['quarantined'])} quarantined; "
                                 f"{number(snap['deferred'])} deferred")]


def _train(t: Mapping[str, Any]) -> str:
    out = (f"{number(t['steps'])} steps, {number(t['tokens_seen'])} tokens, final loss "
           f"{number(t['final_loss'])}")
    if t.get("eval_loss") is not None:
        out += f", held-out loss {number(t['eval_loss'])}"
    return out + (f", from `{t['parent']}`" if t.get("parent") else "")


def _mine(m: Mapping[str, Any]) -> str:
    counts = ", ".join(f"{k} {number(v)}" for k, v in m["counts"].items())
    return (f"{number(sum(m['counts'].values()))} training examples ({counts or 'none'}), "
            f"{number(m['heldout'])} held-out queries, {number(m['docs'])} documents")


def _evaluate(ev: Mapping[str, Any]) -> str:
    out = f"{len(ev['metrics'])} metrics"
    return out + (f"; skipped: {', '.join(ev['skipped'])}" if ev["skipped"] else "")


def pipeline_rows(s: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(stage, what it did) for each stage that ran, in order."""
    tok, model, emb, idx = s["tokenizer"], s["model"], s["embeddings"], s["index"]
    rows = [*_ingest(s["snapshot"]),
            ("tokenizer", f"{tok['kind']}, {number(tok['vocab_size'])} tokens")]
    if s.get("pack"):
        p = s["pack"]
        rows.append(("pack", f"{number(p['sequences'])} sequences of {p['seq_len']} tokens "
                             f"({number(p['tokens'])} tokens, {p['mode']}) in {p['shards']} "
                             "shards"))
    if s.get("mine"):
        rows.append(("mine", _mine(s["mine"])))
    rows += [
        ("train", _train(s["train"])),
        ("evaluate", _evaluate(s["evaluate"])),
        ("register", f"`{model['uri']}` (MLflow run `{model['run_id']}`)"),
        ("embed", f"{number(emb['rows'])} chunks from {number(emb['docs'])} documents, "
                  f"dim {emb['dim']}"),
        ("index", f"{idx['factory']}, {number(idx['count'])} vectors, recall@10 "
                  f"{idx['recall_at_10']:.3f}"),
    ]
    champion, previous = s.get("champion"), s.get("previous_champion")
    if champion is not None:
        moved = (f"champion: version {champion}" if champion == model["version"]
                 else f"champion stays version {champion}")
        rows.append(("promote", moved + (f" (was {previous})" if previous else "")))
    return rows


def metrics_table(metrics: Mapping[str, float], skipped: Mapping[str, str] | None = None) -> str:
    rows = [(m, number(v)) for m, v in metrics.items()]
    rows += [(m, f"skipped: {why}") for m, why in (skipped or {}).items()]
    return table(["metric", "value"], rows) if rows else "_no metrics_"


def pipeline_markdown(s: Mapping[str, Any], title: str = "ctxvec pipeline") -> str:
    """The Markdown of a pipeline run: one row per stage with its counts, the evaluation
    metrics (and why any was skipped), and the sample query's top hits."""
    ev = s["evaluate"]
    parts = [f"# {title}", "",
             f"Workspace `{s['workspace']}`, snapshot `{s['snapshot']['snapshot_id']}`.", "",
             table(["stage", "result"], pipeline_rows(s)), "",
             "## Evaluation", "", metrics_table(ev["metrics"], ev["skipped"])]
    q = s.get("sample_query") or {}
    if q.get("text") and q.get("hits"):
        parts += ["", f"## Sample query: {cell(q['text'])}", "",
                  table(["#", "score", "document", "title"],
                        ((i, f"{h['score']:.4f}", h["doc_id"], h.get("title") or "")
                         for i, h in enumerate(q["hits"], 1)))]
    if s.get("gate"):
        parts += ["", gate_markdown(s["gate"])]
    return "\n".join(parts) + "\n"


# --- the continual update ----------------------------------------------------------------------


def _check_row(c: Mapping[str, Any]) -> tuple[str, ...]:
    measured = c["champion"] is not None and c["challenger"] is not None
    return (
        c["metric"], c["kind"],
        number(c["champion"]) if measured else "-",
        number(c["challenger"]) if measured else "-",
        f"{100 * c['relative_gain']:+.1f}%" if measured else "not measured",
        "pass" if c["passed"] else "**FAIL**",
    )


def gate_markdown(decision: Mapping[str, Any], version: str | None = None,
                  champion: str | None = None) -> str:
    """The gate's decision (``ctxvec.continual.gate.decide``) with every check: the rules once
    above the table and why a check could not be measured below it, so that the table stays
    narrow (Prefect's UI does not wrap table cells)."""
    verdict = "promoted" if decision["promote"] else "rejected"
    who = f"version {version}" if version else "the challenger"
    against = f" against champion version {champion}" if champion else ""
    checks = decision["checks"]
    rules = dict.fromkeys(f"{c['kind']}: {c['rule']}" for c in checks if c["kind"] != "unmeasured")
    lines = [f"## Gate: {who} {verdict}{against}", "",
             f"**{verdict}**: {cell(decision['reason'])}", "",
             "Rules: " + "; ".join(rules) + ".", "",
             table(["metric", "kind", "champion", "challenger", "change", "result"],
                   (_check_row(c) for c in checks))]
    unmeasured = [c for c in checks if c["kind"] == "unmeasured"]
    if unmeasured:
        lines += ["", "Not measured (the recipe asks for them, so each is a failed check):", ""]
        lines += [f"- {c['metric']}: {cell(c.get('why', ''))}" for c in unmeasured]
    return "\n".join(lines) + "\n"


def continual_markdown(s: Mapping[str, Any], title: str = "ctxvec continual update") -> str:
    """The Markdown of a continual update: what it started from, what was new, the challenger,
    the gate's decision with every check and, when promoted, the new index and drift."""
    plan = s["plan"]
    rows = [("status", s["status"]),
            ("parent", f"version {plan['parent_version']} (snapshot "
                       f"`{plan['parent_snapshot']}`)"),
            ("documents", f"{number(plan['new_docs'])} new, {number(plan['old_docs'])} earlier")]
    if s["status"] == "nothing-new" or "gate" not in s:
        rows.append(("decision", "nothing new: the champion stays"))
        return "\n".join([f"# {title}", "", table(["", ""], rows)]) + "\n"
    rows.append(("challenger", f"version {s['version']}"))
    if s["status"] == "promoted":
        idx = s["index"]
        rows.append(("index", f"{idx['factory']}, {number(idx['count'])} vectors, recall@10 "
                              f"{idx['recall_at_10']:.3f}"))
        rows.append(("champion", f"version {s['version']} (was {s.get('previous_champion')})"))
        d = s.get("drift")
        if d:
            rows.append(("drift", f"overlap@10 {d['overlap_at_10']:.3f}, similarity spearman "
                                  f"{d['similarity_spearman']:.3f}"))
    else:
        rows.append(("champion", f"stays version {plan['parent_version']}"))
    metrics = sorted(s["champion_metrics"].keys() | s["challenger_metrics"].keys())
    return "\n".join([
        f"# {title}", "", table(["", ""], rows), "",
        gate_markdown(s["gate"], s["version"], plan["parent_version"]),
        "## Evaluation", "",
        table(["metric", "champion", "challenger"],
              ((m, number(s["champion_metrics"].get(m)), number(s["challenger_metrics"].get(m)))
               for m in metrics)),
    ]) + "\n"


# --- MLflow ------------------------------------------------------------------------------------


def redact(uri: str) -> str:
    """``uri`` without a password (``user:***@host``)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def mlflow_links(tracking_uri: str, run_id: str, name: str,
                 version: str) -> dict[str, str] | None:
    """{"run": URL, "version": URL} of an MLflow server's UI; None when the tracking URI is not
    a web server (the embedded SQLite, a database URI)."""
    if urlsplit(tracking_uri).scheme not in ("http", "https"):
        return None
    base = redact(tracking_uri).rstrip("/")
    return {"run": f"{base}/#/runs/{run_id}", "version": f"{base}/#/models/{name}/versions/"
                                                         f"{version}"}


def mlflow_markdown(tracking_uri: str, run_id: str, name: str, version: str) -> str:
    """Where the run's MLflow run and model version are: links to an MLflow server's UI, or
    for a store without one, the ``mlflow ui`` command that shows it."""
    links = mlflow_links(tracking_uri, run_id, name, version)
    head = [f"# MLflow: `models:/{name}/{version}`", "",
            table(["", ""], [("tracking URI", f"`{redact(tracking_uri)}`"),
                             ("run id", f"`{run_id}`"),
                             ("model version", f"`models:/{name}/{version}`")]), ""]
    if links:
        return "\n".join([*head, f"- [the MLflow run]({links['run']})",
                          f"- [the model version]({links['version']})"]) + "\n"
    return "\n".join([
        *head, "The tracking store is not a web server; to browse it:", "",
        "```bash", f"mlflow ui --backend-store-uri '{redact(tracking_uri)}' --port 5000", "```",
        "", f"then open <http://127.0.0.1:5000/#/runs/{run_id}> (the run) and "
            f"<http://127.0.0.1:5000/#/models/{name}/versions/{version}> (the version).",
    ]) + "\n"
