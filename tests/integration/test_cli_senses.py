"""`ctxvec explain` and `ctxvec query --word W --context S` from outside, with MiniLM.

The sense query runs against a real registry: MiniLM registered as version 1 in the workspace's
MLflow, its word vectors and sense index built under the version's index folder, and the
version promoted to champion, as the pipeline leaves it with ``embed.words.enabled``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.unit.test_words import MONEY, RIVER

REPO = Path(__file__).resolve().parents[2]


def ctxvec(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env["CTXVEC_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "ctxvec.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


# --- explain --------------------------------------------------------------------------------


def test_explain_writes_a_png_and_reports_json(tmp_path):
    out = tmp_path / "attn.png"
    proc = ctxvec("explain", "I saw a saw in the shed.", "--out", str(out), "--model", "minilm",
                  "--layer", "-2", "--head", "3", "--json", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 400
    result = json.loads(proc.stdout)
    assert result["out"] == str(out) and result["layer"] == 4 and result["head"] == 3
    assert result["tokens"][:3] == ["[CLS]", "i", "saw"] and result["n_heads"] == 12
    weights = result["weights"]
    assert len(weights) == len(result["tokens"])
    assert all(abs(sum(row) - 1) < 1e-2 for row in weights)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "6"], "layer 6 does not exist: the model has 6 layers"),
        (["--head", "12"], "head 12 does not exist: each layer has 12 heads"),
        (["--head", "first"], "--head must be a head number or 'mean'"),
        (["--out", "{tmp}/attn.jpg"], "must end in .png"),
    ],
)
def test_explain_bad_layer_or_head_exits_2(tmp_path, args, message):
    full = ["explain", "I saw a saw.", "--out", str(tmp_path / "attn.png"), "--model", "minilm",
            *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    proc = ctxvec(*full, home=tmp_path / "home")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stdout == ""
    assert not list(tmp_path.glob("attn*"))


def test_explain_empty_text_exits_2(tmp_path):
    proc = ctxvec("explain", "  ", "--out", str(tmp_path / "a.png"), "--model", "minilm",
                  home=tmp_path / "home")
    assert proc.returncode == 2 and "text is empty" in proc.stderr


# --- query --word --context -----------------------------------------------------------------


@pytest.fixture(scope="module")
def champion_with_senses(tmp_path_factory):
    """A workspace whose champion (MiniLM, version 1) has a sense index over RIVER + MONEY."""
    from ctxvec.artifacts import EvalReport, IndexArtifact, TrainedModel
    from ctxvec.config import load_config
    from ctxvec.embed.words import run_words
    from ctxvec.index.senses import SENSES_DIR, build_sense_index
    from ctxvec.model.encoder import Encoder
    from ctxvec.model.refs import minilm_dir
    from ctxvec.registry import Registry
    from ctxvec.workspace import Workspace

    home = tmp_path_factory.mktemp("senses-home")
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        ws = Workspace(home).ensure()
        cfg = load_config(None, ["embed.words.enabled=true", "embed.max_tokens=64"])
        run_dir = home / "runs" / "minilm"
        run_dir.mkdir(parents=True)
        trained = TrainedModel(str(run_dir), str(minilm_dir()), 0, 0, None, None, None)
        registry = Registry(ws)
        reg = registry.register(cfg, None, None, trained, EvalReport({}, {}))

        snap = home / "snapshots" / "s1"
        snap.mkdir(parents=True)
        texts = RIVER + MONEY
        pq.write_table(pa.table({"doc_id": [f"d{i:03d}" for i in range(len(texts))],
                                 "text": texts, "title": ["river"] * 10 + ["money"] * 10}),
                       snap / "docs-00000.parquet")
        index_dir = ws.indexes / f"v{reg.version}"
        words_dir = ws.embeddings / f"v{reg.version}" / "words"
        run_words(cfg, Encoder.load(minilm_dir(), device="cpu"), [str(snap)], words_dir,
                  reg.version)
        m = build_sense_index(words_dir, index_dir / SENSES_DIR)
        # the folder's manifest, as the index stage commits it: promote refuses a version
        # whose index folder is not committed (issue 15)
        (index_dir / "manifest.json").write_text(json.dumps({"corpus": [str(snap)], "senses": m}))
        registry.attach_index(reg.name, reg.version,
                              IndexArtifact(str(index_dir), m["factory"], m["count"], m["dim"],
                                            1.0, reg.version))
        registry.promote(reg.name, reg.version)
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return home


def test_sense_query_returns_occurrences_of_the_same_sense(champion_with_senses):
    context = "I opened a savings account at the bank."
    proc = ctxvec("query", "--word", "Bank", "--context", context, "-k", "5", "--json",
                  home=champion_with_senses)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)["hits"]
    assert len(hits) == 5
    assert set(hits[0]) >= {"doc_id", "score", "word", "start", "end", "text", "title"}
    assert sum(h["title"] == "money" for h in hits) >= 4
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for h in hits:
        a = h["start"] - h["snippet_start"]
        assert h["word"] == "bank" and h["text"][a:a + 4].lower() == "bank"
    # the plain-text form marks the occurrence
    proc = ctxvec("query", "--word", "bank", "--context", "Ducks swam by the bank of the pond.",
                  "-k", "3", home=champion_with_senses)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("[bank]") + proc.stdout.count("[Bank]") == 3
    assert "[river]" in proc.stdout  # titles: the river sense comes back


@pytest.mark.parametrize(
    "args, message",
    [
        (["--word", "xyzzy", "--context", "The xyzzy spoke."],
         "'xyzzy' does not occur in the indexed sample;"),
        (["--word", "bank"], "needs both --word W and --context SENTENCE"),
        (["some text", "--word", "bank", "--context", "the bank"], "leave out TEXT"),
        (["--word", "bank", "--context", "the bank", "-k", "0"], "-k must be at least 1"),
    ],
)
def test_sense_query_bad_input_exits_2(champion_with_senses, args, message):
    proc = ctxvec("query", *args, home=champion_with_senses)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stdout == ""
