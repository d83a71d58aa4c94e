"""The CLI contract from outside: exit codes, JSON on stdout, encode and eval sts with minilm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import STS_DEV, needs_shared_data

REPO = Path(__file__).resolve().parents[2]


def ctxvec(*args: str, home: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env["CTXVEC_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "ctxvec.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, input=stdin)


def test_version_and_help(tmp_path):
    from ctxvec import __version__

    out = ctxvec("--version", home=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"ctxvec {__version__}"
    for cmd in (["--help"], ["run", "--help"], ["query", "--help"], ["encode", "--help"],
                ["eval", "sts", "--help"]):
        proc = ctxvec(*cmd, home=tmp_path)
        assert proc.returncode == 0 and "Usage" in proc.stdout, cmd


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--config", "configs/nope.yaml"], "config file not found"),
        (["run", "--config", "configs/tiny.yaml", "--set", "train.stpes=1"], "train.stpes"),
        (["run", "--config", "configs/tiny.yaml", "--set", "ingest.sources=[/no/such]"],
         "matches no file"),
        (["encode", "--model", "minilm", "--input", "nope.txt", "--output", "{tmp}/x.parquet"],
         "input file not found"),
        (["encode", "--model", "/no/model", "--input", "configs/tiny.yaml",
          "--output", "{tmp}/x.parquet"],
         "unknown model reference"),
        (["query", "hello", "-k", "0"], "-k must be at least 1"),
        (["query", "hello"], "no ctxvec workspace at"),  # and none is made (issue 16)
        (["eval", "sts", "--data", "configs/tiny.yaml", "--model", "minilm"], "expected 7"),
        (["run"], "Missing option"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, args, message):
    proc = ctxvec(*(a.replace("{tmp}", str(tmp_path)) for a in args), home=tmp_path / "home")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "{tmp}/x.parquet").exists()


def test_encode_minilm_matches_sentence_transformers(tmp_path):
    lines = ["I saw a saw.", "The saw was sharp.", "", "Paris is the capital of France.",
             "word " * 400]  # the last one is longer than MiniLM's 256-token window
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    proc = ctxvec("encode", "--model", "minilm", "--input", str(src), "--output", str(out),
                  "--json", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == len(lines)
    table = pq.read_table(out)
    assert table.column("text").to_pylist() == lines
    vtype = table.schema.field("vector").type
    assert vtype.list_size == 384 and str(vtype.value_type) == "float"
    vecs = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)

    from sentence_transformers import SentenceTransformer

    from ctxvec.model.refs import minilm_dir

    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(
        lines, normalize_embeddings=True)
    cos = (vecs * ref).sum(axis=1)
    assert cos.min() >= 0.999, cos


@needs_shared_data(STS_DEV)
def test_eval_sts_minilm_contract(tmp_path):
    proc = ctxvec("eval", "sts", "--data", str(STS_DEV), "--model", "minilm", "--json",
                  home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 1500
    assert abs(result["spearman"] - 0.867) <= 0.003


def test_ingest_and_tokenizer_train_commands(tmp_path):
    home = tmp_path / "home"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": f"document {i} about rivers and towns {i * 7}"})
                + "\n" for i in range(60)) + "{broken\n")
    proc = ctxvec("ingest", str(src), "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("snapshot", "read", "kept", "duplicates", "near_duplicates", "filtered",
                "quarantined"):
        assert key in out, key
    assert (out["read"], out["kept"], out["quarantined"]) == (61, 60, 1)
    assert out["by_reason"] == {"malformed JSON": 1}
    again = json.loads(ctxvec("ingest", str(src), "--json", home=home).stdout)
    assert again["kept"] == 0 and again["snapshot"] == out["snapshot"]  # nothing new

    proc = ctxvec("tokenizer", "train", "--set", "tokenizer.kind=bpe", "--set",
                  "tokenizer.vocab_size=300", "--set", "tokenizer.heldout_every=10", "--json",
                  home=home)
    assert proc.returncode == 0, proc.stderr
    tok = json.loads(proc.stdout)
    assert tok["kind"] == "bpe" and (Path(tok["path"]) / "tokenizer.json").is_file()
    assert tok["stats"]["heldout_docs"] == 6 and tok["stats"]["unk_rate"] == 0.0

    empty = ctxvec("tokenizer", "train", home=tmp_path / "empty")
    assert empty.returncode == 2 and "run `ctxvec ingest" in empty.stderr


# --- eval retrieval, wic, perplexity --------------------------------------------------------

DATA = STS_DEV.parents[1]  # the shared data folder (conftest.SHARED_DATA)
ARGUANA = DATA / "beir-arguana"
WIC = DATA / "wic"


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "wic", "--data", "{tmp}/no-wic", "--model", "minilm"], "WiC folder not found"),
        (["eval", "wic", "--data", "{tmp}", "--model", "minilm"], "WiC file not found"),
        (["eval", "retrieval", "--data", "{tmp}/no-beir", "--model", "minilm"],
         "BEIR folder not found"),
        (["eval", "perplexity", "--data", "{tmp}/none.txt", "--model", "minilm"],
         "text file not found"),
    ],
)
def test_eval_commands_exit_2_on_missing_data(tmp_path, args, message):
    proc = ctxvec(*(a.replace("{tmp}", str(tmp_path)) for a in args), "--json",
                  home=tmp_path / "home")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
@needs_shared_data(ARGUANA)
def test_eval_retrieval_minilm_arguana_contract(tmp_path):
    """Published all-MiniLM-L6-v2 ArguAna nDCG@10 is 0.502 (about 6 minutes on 2 CPU cores)."""
    proc = ctxvec("eval", "retrieval", "--data", str(ARGUANA), "--model", "minilm", "--json",
                  home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n_queries"] == 1406
    assert abs(result["ndcg@10"] - 0.50) <= 0.02
    assert 0.9 < result["recall@100"] <= 1.0 and 0.3 < result["mrr@10"] < result["ndcg@10"]
    assert "5 qrels point at doc ids absent" in proc.stderr


@pytest.mark.slow
@needs_shared_data(WIC)
def test_eval_wic_minilm_contract(tmp_path):
    proc = ctxvec("eval", "wic", "--data", str(WIC), "--model", "minilm", "--json",
                  home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 638
    assert result["accuracy"] > 0.55 and result["train_accuracy"] > 0.55
    assert -1.0 <= result["threshold"] <= 1.0


@needs_shared_data(STS_DEV)
def test_finetune_prints_a_model_reference_other_commands_accept(tmp_path):
    home = tmp_path / "home"
    # every 5th pair of STS-B dev (300 of 1,500, every genre): three evaluations of the whole
    # set were most of this test's time
    dev = tmp_path / "sts-dev-300.csv"
    dev.write_text("".join(STS_DEV.read_text(encoding="utf-8").splitlines(True)[::5]),
                   encoding="utf-8")
    proc = ctxvec("finetune", "--config", "configs/finetune-stsb.yaml",
                  "--set", "train.epochs=null", "--set", "train.steps=4",
                  "--set", "train.eval_every=2", "--set", "train.warmup_steps=1",
                  "--set", "train.objectives.0.data.max_examples=64",
                  "--set", f"evaluate.sts={dev}", "--json", home=home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["model"] == "models:/ctxvec-encoder/1" and out["steps"] == 4
    assert "best_sts_spearman" in out["train_metrics"]  # early stopping watched the dev set
    assert out["metrics"]["sts_spearman"] > 0.8  # 4 small steps from minilm keep it good
    src = tmp_path / "in.txt"
    src.write_text("a sentence\nanother one\n")
    enc = ctxvec("encode", "--model", out["model"], "--input", str(src), "--output",
                 str(tmp_path / "v.parquet"), "--json", home=home)
    assert enc.returncode == 0, enc.stderr[-2000:]
    assert json.loads(enc.stdout)["rows"] == 2
    again = ctxvec("encode", "--model", out["model_dir"], "--input", str(src), "--output",
                   str(tmp_path / "w.parquet"), "--json", home=home)
    assert again.returncode == 0
    bad = ctxvec("finetune", "--config", "configs/tiny.yaml", home=home)
    assert bad.returncode == 2 and "starts from a pretrained model" in bad.stderr
