from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from ctxvec.config import load_config
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.tokenizer import packing
from ctxvec.tokenizer.packing import pack_texts, read_packed, run_pack
from ctxvec.tokenizer.trainer import SPECIALS, run_tokenizer

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo" / "wiki_00.gz"


@pytest.fixture(scope="module")
def tok():
    vocab = {t: i for i, t in enumerate(SPECIALS + [f"w{i}" for i in range(100)] + ["."])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return t


def _doc(start, n):
    return " ".join(f"w{i}" for i in range(start, start + n))


def test_concat_fills_windows_and_marks_boundaries(tok):
    out = pack_texts([_doc(0, 10), _doc(10, 30), _doc(40, 7)], tok, seq_len=16, mode="concat")
    ids, length = out["input_ids"], out["length"]
    assert ids.shape[1] == 16 and (ids[:, 0] == 2).all()  # [CLS]
    body = np.concatenate([row[1 : n - 1] for row, n in zip(ids, length, strict=True)])
    expected = [5 + i for i in range(10)] + [3] + [15 + i for i in range(30)] + [3] + [
        45 + i for i in range(7)] + [3]
    assert body.tolist() == expected  # nothing lost, [SEP] between documents
    assert (length[:-1] == 16).all() and length[-1] < 16  # only the last row is padded
    assert (ids[-1, length[-1]:] == 0).all()


def test_doc_mode_never_crosses_documents(tok):
    out = pack_texts([_doc(0, 20), _doc(50, 5)], tok, seq_len=12, mode="doc")
    ids, length = out["input_ids"], out["length"]
    # 20 tokens fill two windows of 10; the 5-token document gets its own, padded, row
    assert length.tolist() == [12, 12, 7]
    assert ids[0, 1:11].tolist() == [5 + i for i in range(10)]
    assert ids[1, 1:11].tolist() == [15 + i for i in range(10)]
    assert ids[2, :7].tolist() == [2, 55, 56, 57, 58, 59, 3] and (ids[2, 7:] == 0).all()


def test_pair_mode_builds_sentence_pairs(tok):
    text = " . ".join(_doc(i * 4, 4) for i in range(6)) + " ."
    out = pack_texts([text], tok, seq_len=24, mode="pair")
    ids, length, a_len = out["input_ids"], out["length"], out["a_len"]
    assert len(ids) >= 1
    for row, n, a in zip(ids, length, a_len, strict=True):
        assert row[0] == 2 and row[a - 1] == 3 and row[n - 1] == 3  # [CLS] A [SEP] B [SEP]
        assert 3 not in row[1 : a - 1].tolist()


def test_run_pack_shards_and_resumes(workspace, tmp_path, monkeypatch):
    cfg = load_config(None, [f"ingest.sources=[{DEMO}]", "ingest.max_docs=120",
                             "ingest.shard_docs=30", "tokenizer.vocab_size=500",
                             "pack.docs_per_shard=30", "pack.workers=1", "train.seq_len=32"])
    snap = run_ingest(cfg, workspace)
    tok_art = run_tokenizer(cfg, workspace, snap)
    calls = []
    real = packing.pack_shard

    def crash_on_third(*args):
        calls.append(args[-1])
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(packing, "pack_shard", crash_on_third)
    with pytest.raises(RuntimeError):
        run_pack(cfg, workspace, snap, tok_art)
    folder = next((workspace.root / "packed").iterdir())
    assert len(list(folder.glob("*.parquet"))) == 2 and not (folder / "manifest.json").exists()
    calls.clear()
    monkeypatch.setattr(packing, "pack_shard", lambda *a: (calls.append(a[-1]), real(*a))[1])
    packed = run_pack(cfg, workspace, snap, tok_art)  # resumes: only the missing shards
    manifest = json.loads((folder / "manifest.json").read_text())
    assert packed.shards == manifest["shards"] == 4 and packed.sequences == manifest["sequences"]
    assert len(calls) == 2  # the two shards the crash left undone
    ids = read_packed(packed.path)
    assert ids.shape == (packed.sequences, 32)
    total = sum(pq.read_table(f, columns=["length"]).column(0).to_numpy().sum()
                for f in folder.glob("*.parquet"))
    assert total == packed.tokens
    # packing again is a no-op that returns the same record
    assert run_pack(cfg, workspace, snap, tok_art) == packed


def test_run_pack_reads_only_the_newest_version_of_a_document(workspace, tmp_path):
    src = tmp_path / "docs.jsonl"
    words = " ".join(f"word{i}" for i in range(30))
    src.write_text(json.dumps({"id": "a", "text": "alpha " + words}) + "\n"
                   + json.dumps({"id": "b", "text": "beta " + words}) + "\n")
    sets = [f"ingest.sources=[{src}]", "ingest.near_dup.enabled=false", "pack.mode=doc",
            "train.seq_len=64", "tokenizer.vocab_size=100", "tokenizer.min_frequency=1",
            "pack.workers=1"]
    run_ingest(load_config(None, sets), workspace)
    src.write_text(json.dumps({"id": "a", "text": "omega " + words}) + "\n"
                   + json.dumps({"id": "b", "text": "beta " + words}) + "\n")
    cfg = load_config(None, sets)
    snap = run_ingest(cfg, workspace)
    assert snap.kept == 1 and snap.corpus_docs == 2
    art = run_tokenizer(cfg, workspace, snap)
    packed = run_pack(cfg, workspace, snap, art)
    assert packed.sequences == 2  # a (newest version) and b, each one row
    t = Tokenizer.from_file(f"{art.path}/tokenizer.json")
    decoded = " ".join(t.decode(row.tolist()) for row in read_packed(packed.path))
    assert "omega" in decoded and "alpha" not in decoded and "beta" in decoded
