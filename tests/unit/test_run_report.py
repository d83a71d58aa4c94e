"""The Markdown a flow run publishes as Prefect artifacts (``ctxvec.stages.report``): built from
the summaries ``run_pipeline`` and ``run_continual`` return, whose parts are the stages' real
records and the real gate's decision."""

from __future__ import annotations

from typing import Any

from ctxvec.artifacts import (
    Embeddings,
    EvalReport,
    IndexArtifact,
    MinedData,
    PackedData,
    RegisteredModel,
    Snapshot,
    TokenizerArtifact,
    TrainedModel,
)
from ctxvec.config.continual import GateConfig
from ctxvec.continual.gate import decide
from ctxvec.stages import report

SNAP = Snapshot("20261121T050254956645Z", "/ws/snapshots/s1", ["/ws/snapshots/s1"], 617, True,
                1530, 617, 3, 2, 905, 1, 0, 2)
TOK = TokenizerArtifact("/ws/tokenizers/t", "ab12", 1000, "wordpiece", {})
PACK = PackedData("/ws/packed/p", 2, 480, 61440, 128, "concat")
TRAINED = TrainedModel("/ws/runs/r", "/ws/runs/r/model", 12, 6144, 6.8274641, 6.91, None)
EVAL = EvalReport({"mlm_eval_loss": 6.8275, "mlm_perplexity": 922.8919},
                  {"sts": "evaluate.sts is not set in the recipe"})
REG = RegisteredModel("ctxvec-encoder", "3", "0f3c9d2e81a7", "models:/ctxvec-encoder/3")
EMB = Embeddings("/ws/embeddings/v3", 7508, 617, 32, "3")
IDX = IndexArtifact("/ws/indexes/v3", "Flat", 7508, 32, 1.0, "3")


def pipeline_summary(**changes: Any) -> dict[str, Any]:
    s = {"workspace": "/ws", "snapshot": SNAP.to_dict(), "tokenizer": TOK.to_dict(),
         "pack": PACK.to_dict(), "mine": None, "train": TRAINED.to_dict(),
         "evaluate": EVAL.to_dict(), "model": REG.to_dict(), "embeddings": EMB.to_dict(),
         "index": IDX.to_dict(), "champion": "3", "previous_champion": "2",
         "sample_query": {"text": "a football club", "hits": [
             {"doc_id": "wiki:1", "score": 0.9241, "title": "Barbara | Sattler", "text": "x"}]}}
    return s | changes


def rows(markdown: str) -> dict[str, list[str]]:
    """First cell -> the other cells, for every table row of ``markdown`` (its first row of
    that name)."""
    out = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            out.setdefault(cells[0], cells[1:])
    return out


def test_pipeline_markdown_has_every_stage_count_and_metric():
    text = report.pipeline_markdown(pipeline_summary(), "ctxvec-pipeline: tiny")
    assert text.startswith("# ctxvec-pipeline: tiny\n")
    r = rows(text)
    assert "Workspace `/ws`, snapshot `20261121T050254956645Z`." in text
    assert r["ingest"] == ["kept 617 of 1,530 read; corpus 617 documents"]
    assert r["ingest: not kept"] == ["3 duplicates, 2 near-duplicates, 905 filtered, "
                                     "1 quarantined; 2 deferred"]
    assert r["tokenizer"] == ["wordpiece, 1,000 tokens"]
    assert r["pack"] == ["480 sequences of 128 tokens (61,440 tokens, concat) in 2 shards"]
    assert "mine" not in r  # the mine stage did not run
    assert r["train"] == ["12 steps, 6,144 tokens, final loss 6.8275, held-out loss 6.9100"]
    assert r["register"] == ["`models:/ctxvec-encoder/3` (MLflow run `0f3c9d2e81a7`)"]
    assert r["embed"] == ["7,508 chunks from 617 documents, dim 32"]
    assert r["index"] == ["Flat, 7,508 vectors, recall@10 1.000"]
    assert r["promote"] == ["champion: version 3 (was 2)"]
    assert r["mlm_eval_loss"] == ["6.8275"] and r["mlm_perplexity"] == ["922.8919"]
    assert r["sts"] == ["skipped: evaluate.sts is not set in the recipe"]
    # a pipe in a title stays inside its cell
    assert r["1"] == ["0.9241", "wiki:1", "Barbara \\| Sattler"]


def test_pipeline_markdown_names_mined_data_a_champion_that_stayed_and_nothing_new():
    mined = MinedData("/ws/mined/k", "k", {"title": 500, "span": 250}, 50, 300)
    text = report.pipeline_markdown(pipeline_summary(mine=mined.to_dict(), champion="2",
                                                     previous_champion=None))
    r = rows(text)
    assert r["mine"] == ["750 training examples (title 500, span 250), 50 held-out queries, "
                         "300 documents"]
    assert r["promote"] == ["champion stays version 2"]
    unchanged = {**SNAP.to_dict(), "created": False}
    r = rows(report.pipeline_markdown(pipeline_summary(snapshot=unchanged)))
    assert r["ingest"] == ["nothing new; corpus 617 documents"] and "ingest: not kept" not in r


def update_summary(decision: dict[str, Any], champion: dict, challenger: dict) -> dict:
    status = "promoted" if decision["promote"] else "rejected"
    s = {"status": status, "version": "4", "gate": decision, "champion_metrics": champion,
         "challenger_metrics": challenger,
         "plan": {"parent_version": "3", "parent_snapshot": "s1", "new_docs": 150,
                  "old_docs": 617}}
    if decision["promote"]:
        s |= {"index": IDX.to_dict(), "previous_champion": "3",
              "drift": {"overlap_at_10": 0.8125, "similarity_spearman": 0.9}}
    return s


def test_continual_markdown_shows_a_rejection_with_every_check():
    champion = {"new.mlm_loss": 7.0, "sts_spearman": 0.58}
    challenger = {"new.mlm_loss": 6.5, "sts_spearman": 0.40}
    decision = decide(GateConfig(new_metric="new.mlm_loss"), champion, challenger,
                      {"wic": "data not found: /x/wic"})
    text = report.continual_markdown(update_summary(decision, champion, challenger))
    r = rows(text)
    assert r["status"] == ["rejected"] and r["champion"] == ["stays version 3"]
    assert r["documents"] == ["150 new, 617 earlier"]
    assert "## Gate: version 4 rejected against champion version 3" in text
    assert f"**rejected**: {decision['reason']}" in text
    assert "Rules: new-domain: improves by more than 0; old-domain: worsens by at most 0.02." \
        in text
    assert r["new.mlm_loss"] == ["new-domain", "7.0000", "6.5000", "+7.1%", "pass"]
    assert r["sts_spearman"] == ["old-domain", "0.5800", "0.4000", "-31.0%", "**FAIL**"]
    assert r["wic"] == ["unmeasured", "-", "-", "not measured", "**FAIL**"]
    assert "\n- wic: data not found: /x/wic\n" in text


def test_continual_markdown_shows_a_promotion_and_nothing_new():
    champion, challenger = {"new.mlm_loss": 7.0}, {"new.mlm_loss": 6.5}
    decision = decide(GateConfig(new_metric="new.mlm_loss"), champion, challenger)
    r = rows(report.continual_markdown(update_summary(decision, champion, challenger)))
    assert r["status"] == ["promoted"] and r["champion"] == ["version 4 (was 3)"]
    assert r["drift"] == ["overlap@10 0.812, similarity spearman 0.900"]
    assert r["new.mlm_loss"][-1] == "pass"
    nothing = {"status": "nothing-new", "plan": {"parent_version": "3", "parent_snapshot": "s1",
                                                 "new_docs": 0, "old_docs": 617}}
    r = rows(report.continual_markdown(nothing))
    assert r["decision"] == ["nothing new: the champion stays"] and "challenger" not in r


def test_mlflow_markdown_for_the_embedded_store_gives_the_ui_command():
    db = "sqlite:////tmp/ws/mlflow.db"
    assert report.mlflow_links(db, "0f3c", "ctxvec-encoder", "3") is None
    text = report.mlflow_markdown(db, "0f3c", "ctxvec-encoder", "3")
    assert "mlflow ui --backend-store-uri 'sqlite:////tmp/ws/mlflow.db' --port 5000" in text
    assert "<http://127.0.0.1:5000/#/runs/0f3c>" in text
    assert "<http://127.0.0.1:5000/#/models/ctxvec-encoder/versions/3>" in text


def test_mlflow_links_for_a_server_and_no_password_anywhere():
    links = report.mlflow_links("https://alice:s3cret@mlflow.example.org/", "0f3c",
                                "ctxvec-encoder", "3")
    assert links == {"run": "https://alice:***@mlflow.example.org/#/runs/0f3c",
                     "version": "https://alice:***@mlflow.example.org/#/models/ctxvec-encoder/"
                                "versions/3"}
    text = report.mlflow_markdown("postgresql://ml:s3cret@db:5432/mlflow", "0f3c", "m", "1")
    assert "s3cret" not in text and "postgresql://ml:***@db:5432/mlflow" in text


def test_artifact_keys_are_prefect_keys():
    assert report.artifact_key("ctxvec-encoder", "pipeline") == "ctxvec-encoder-pipeline"
    assert report.artifact_key("My_Model v2", "gate") == "my-model-v2-gate"
