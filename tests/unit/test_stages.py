"""The stage graph (ctxvec.stages): the order and dependencies of the declared stages, the one
decision of which stages a run takes, and each stage's idempotence key, which must change when
the config it reads or an upstream record changes, and not otherwise."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from ctxvec import stages
from ctxvec.artifacts import Snapshot, TokenizerArtifact
from ctxvec.config import load_config
from ctxvec.stages import continual as continual_stages
from ctxvec.stages.graph import check_order, execute
from ctxvec.workspace import Workspace
from tests.helpers import REPO, TINY

FINETUNE = REPO / "configs" / "finetune-stsb.yaml"


def names(seq) -> list[str]:
    return [s.name for s in seq]


# --- order and dependencies -------------------------------------------------------------------


def test_pipeline_stages_in_order_each_after_its_upstream():
    assert names(stages.STAGES) == ["ingest", "tokenizer", "pack", "mine", "train", "evaluate",
                                    "register", "embed", "index", "promote", "sample-query"]
    check_order(stages.STAGES)
    assert stages.BY_NAME["train"].upstream == ("ingest", "tokenizer", "pack", "mine")
    assert stages.BY_NAME["evaluate"].upstream == ("train", "mine")
    assert stages.BY_NAME["embed"].upstream == ("ingest", "train", "register")
    # the gate compares the new version with the champion on the run's evaluation
    assert stages.BY_NAME["promote"].upstream == ("register", "index", "train", "evaluate",
                                                  "mine")
    assert "gpu-train" in stages.BY_NAME["train"].tags and stages.BY_NAME["train"].streams


def test_continual_stages_share_ingest_and_run_in_order():
    assert names(stages.CONTINUAL_STAGES) == ["ingest", "plan", "split", "train", "evaluate",
                                              "register", "gate", "deploy"]
    check_order(stages.CONTINUAL_STAGES)
    assert stages.CONTINUAL_STAGES[0] is stages.BY_NAME["ingest"]  # one ingest stage
    # nothing new: the graph stops after the plan
    assert continual_stages.PLAN.halts(SimpleNamespace(status="nothing-new"))
    assert not continual_stages.PLAN.halts(SimpleNamespace(status="ready"))


def test_check_order_refuses_a_stage_before_its_upstream():
    with pytest.raises(AssertionError, match="runs before its upstream"):
        check_order([stages.BY_NAME["pack"], stages.BY_NAME["tokenizer"]])


def test_execute_hands_each_stage_its_upstream_records_and_none_for_unplanned(tmp_path):
    seen: dict[str, tuple] = {}

    def call(stage, cfg, ws, records):
        seen[stage.name] = records
        return f"<{stage.name}>"

    cfg = load_config(FINETUNE)
    out = execute(cfg, Workspace(tmp_path), stages.plan(cfg, stages.TRAIN), call)
    assert list(out) == ["tokenizer", "train", "evaluate", "register"]
    assert seen["train"] == (None, "<tokenizer>", None, None)  # no ingest, pack or mine
    assert seen["register"] == (None, "<tokenizer>", "<train>", "<evaluate>")


# --- which stages a run takes: decided once ---------------------------------------------------


def test_plan_decides_corpus_tokenizer_and_pack():
    tiny = load_config(TINY)  # scratch model, MLM objective
    assert names(stages.plan(tiny, stages.TRAIN)) == [
        "ingest", "tokenizer", "pack", "train", "evaluate", "register"]
    assert names(stages.plan(tiny, stages.PIPELINE)) == [
        s for s in names(stages.STAGES) if s != "mine"]  # nothing reads mined data
    mined = load_config(TINY, ["evaluate.pseudo=true", "adapt.pseudo_queries.filter=bm25",
                               "adapt.negatives.sources=[bm25]"])
    assert names(stages.plan(mined, stages.PIPELINE)) == names(stages.STAGES)
    # MLM with no steps still packs: the train stage reads the packed data either way
    assert "pack" in names(stages.plan(load_config(TINY, ["train.steps=0"])))
    ft = load_config(FINETUNE)  # minilm, its own tokenizer, CoSENT on a file
    assert not stages.needs_pack(ft) and not stages.needs_corpus(ft, stages.TRAIN)
    assert names(stages.plan(ft, stages.TRAIN)) == ["tokenizer", "train", "evaluate", "register"]
    # the pipeline embeds the corpus, so it always reads it (and trains no pack for CoSENT)
    assert names(stages.plan(ft, stages.PIPELINE)) == [
        "ingest", "tokenizer", "train", "evaluate", "register", "embed", "index", "promote",
        "sample-query"]
    quiet = load_config(TINY, ["registry.promote=never"])
    assert "sample-query" not in names(stages.plan(quiet))


def test_train_and_register_and_the_pipeline_run_the_planned_stages(tmp_path):
    """The CLI's pretrain/finetune path and the pipeline take exactly ``plan``'s stages."""
    ran: list[str] = []

    class Rec(SimpleNamespace):
        def to_dict(self):
            return dict(vars(self))

    def call(stage, cfg, ws, records):
        ran.append(stage.name)
        if stage.name == "promote":
            return {"champion": "1", "previous_champion": None, "decision": "promote"}
        return Rec(model_dir="m", run_dir="r", steps=1, tokens_seen=2, final_loss=0.5,
                   metrics={}, skipped={}, uri="models:/x/1", version="1", run_id="abc",
                   name="x")

    ft = load_config(FINETUNE)
    out = stages.train_and_register(ft, Workspace(tmp_path), call)
    assert ran == names(stages.plan(ft, stages.TRAIN)) and out["version"] == "1"
    ran.clear()
    tiny = load_config(TINY)
    summary = stages.run_pipeline(tiny, Workspace(tmp_path), call)
    assert ran == names(stages.plan(tiny, stages.PIPELINE))
    assert summary["champion"] == "1" and summary["pack"] is not None


def test_no_flow_decides_what_to_run():
    """The flows run the graph; the pack and corpus decisions live in ctxvec.stages alone."""
    for flow in ("pipeline.py", "continual.py"):
        text = (REPO / "flows" / flow).read_text()
        assert "mlm" not in text and "needs_" not in text and "run_" + "ingest" not in text


# --- idempotence keys ---------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path):
    ws = Workspace(tmp_path / "home").ensure()
    snap_dir = tmp_path / "snap"
    snap_dir.mkdir()
    (snap_dir / "docs-0.parquet").write_bytes(b"one")
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text("{}")
    snap = Snapshot("20240101T000000Z", str(snap_dir), [str(snap_dir)], 10, True,
                    12, 10, 1, 0, 1, 0, 0, 0)
    tok = TokenizerArtifact(str(tok_dir), hashlib.sha256(b"{}").hexdigest(), 1000, "wordpiece",
                            {})
    return ws, snap, tok


def test_a_key_changes_with_the_sections_the_stage_reads_and_nothing_else(inputs):
    ws, snap, tok = inputs
    pack = stages.BY_NAME["pack"]
    base = pack.key(load_config(TINY), ws, snap, tok)
    assert base and base == pack.key(load_config(TINY), ws, snap, tok)  # deterministic
    assert pack.key(load_config(TINY, ["pack.mode=doc"]), ws, snap, tok) != base
    assert pack.key(load_config(TINY, ["train.seq_len=32"]), ws, snap, tok) != base
    # sections pack does not read
    assert pack.key(load_config(TINY, ["train.lr=0.5"]), ws, snap, tok) == base
    assert pack.key(load_config(TINY, ["embed.batch_size=7"]), ws, snap, tok) == base
    train = stages.BY_NAME["train"]
    t0 = train.key(load_config(TINY), ws, snap, tok, None, None)
    assert train.key(load_config(TINY, ["train.lr=0.5"]), ws, snap, tok, None, None) != t0
    assert train.key(load_config(TINY, ["model.dropout=0.2"]), ws, snap, tok, None, None) != t0
    assert train.key(load_config(TINY, ["pack.mode=doc"]), ws, snap, tok, None, None) == t0
    assert train.key(load_config(TINY, ["index.nprobe=4"]), ws, snap, tok, None, None) == t0


def test_a_key_changes_with_its_upstream_records_and_their_files(inputs):
    ws, snap, tok = inputs
    cfg = load_config(TINY)
    pack = stages.BY_NAME["pack"]
    base = pack.key(cfg, ws, snap, tok)
    other_tok = TokenizerArtifact(tok.path, "0" * 64, tok.vocab_size, tok.kind, tok.stats)
    assert pack.key(cfg, ws, snap, other_tok) != base
    later = Snapshot(**{**snap.to_dict(), "snapshot_id": "20240102T000000Z"})
    assert pack.key(cfg, ws, later, tok) != base
    # an ingest that found nothing new names the same corpus: its counters do not count
    nothing_new = Snapshot(**{**snap.to_dict(), "created": False, "read": 0, "kept": 0,
                              "duplicates": 0, "skipped_files": 1})
    assert pack.key(cfg, ws, nothing_new, tok) == base
    # a file of the corpus rewritten in place is an input changed
    (Path(snap.path) / "docs-0.parquet").write_bytes(b"two, longer")
    assert pack.key(cfg, ws, snap, tok) != base


def test_stages_that_must_run_have_no_key(inputs, monkeypatch):
    ws, snap, tok = inputs
    cfg = load_config(TINY)
    assert stages.BY_NAME["ingest"].key(cfg, ws) is None
    assert stages.BY_NAME["promote"].key(cfg, ws, None, None) is None
    key, reason = stages.BY_NAME["train"].key_and_reason(
        load_config(TINY, ["train.resume=false"]), ws, snap, tok, None)
    assert key is None and "fresh run" in reason
    assert stages.BY_NAME["tokenizer"].key(
        load_config(FINETUNE), ws, snap) is None
    assert all(s.keyed is None for s in stages.CONTINUAL_STAGES)
    # register is keyed on the registry it writes to
    reg = stages.BY_NAME["register"]
    here = reg.key(cfg, ws, snap, tok, None, None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
    assert reg.key(cfg, ws, snap, tok, None, None) != here


def test_a_key_refuses_the_wrong_number_of_records(inputs):
    ws, snap, tok = inputs
    with pytest.raises(TypeError, match="takes 2 upstream records"):
        stages.BY_NAME["pack"].key(load_config(TINY), ws, snap)


def test_reusable_means_the_files_are_there(inputs):
    ws, snap, tok = inputs
    pack = stages.BY_NAME["pack"]
    assert pack.reusable(tok, ws)
    gone = TokenizerArtifact(str(Path(tok.path) / "gone"), tok.sha256, 1, "wordpiece", {})
    assert not pack.reusable(gone, ws)
