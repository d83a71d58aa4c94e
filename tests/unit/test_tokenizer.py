from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from ctxvec.config import load_config
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.tokenizer.trainer import run_tokenizer

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo" / "wiki_00.gz"


@pytest.fixture
def snapshot(workspace):
    cfg = load_config(None, [f"ingest.sources=[{DEMO}]", "ingest.max_docs=300"])
    return run_ingest(cfg, workspace)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_train_save_and_reload(kind, snapshot, workspace):
    cfg = load_config(None, [f"tokenizer.kind={kind}", "tokenizer.vocab_size=800",
                             "tokenizer.heldout_every=10"])
    art = run_tokenizer(cfg, workspace, snapshot)
    assert art.kind == kind and 500 < art.vocab_size <= 800
    assert art.stats["heldout_docs"] == 30 and 1.0 <= art.stats["fertility"] < 4
    assert 0.2 < art.stats["word_coverage"] <= 1 and art.stats["unk_rate"] < 0.01
    tok = Tokenizer.from_file(f"{art.path}/tokenizer.json")
    enc = tok.encode("I saw a saw")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    manifest = json.loads(open(f"{art.path}/manifest.json").read())
    assert manifest["sha256"] == art.sha256 and manifest["stats"]["fertility"] >= 1.0
    # the folder loads as a transformers fast tokenizer with BERT's special tokens
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(art.path)
    assert hf.mask_token == "[MASK]" and hf.pad_token_id == 0


def test_bpe_round_trip_and_no_unknowns(snapshot, workspace):
    cfg = load_config(None, ["tokenizer.kind=bpe", "tokenizer.vocab_size=300",
                             "tokenizer.lowercase=false"])
    art = run_tokenizer(cfg, workspace, snapshot)
    tok = Tokenizer.from_file(f"{art.path}/tokenizer.json")
    text = "Zürich's ünseen wörds → 東京 and emoji 🙂"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids).strip() == text  # byte-level: lossless on NFKC-normal text
    assert tok.token_to_id("[UNK]") not in ids


def test_wordpiece_splits_unseen_words_into_subwords(snapshot, workspace):
    cfg = load_config(None, ["tokenizer.vocab_size=300", "tokenizer.min_frequency=1"])
    art = run_tokenizer(cfg, workspace, snapshot)
    tok = Tokenizer.from_file(f"{art.path}/tokenizer.json")
    pieces = tok.encode("sawtools", add_special_tokens=False).tokens
    assert len(pieces) > 1 and any(p.startswith("##") for p in pieces)
