from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from ctxvec.config import load_config
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.tokenizer.trainer import run_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A saw is a tool; I saw a saw at the hardware store.",
    "Tokenizers split unseen words such as antidisestablishmentarianism into subwords.",
    "Café, naïve and Zürich carry accents.",
] * 25


@pytest.fixture
def snapshot(workspace, tmp_path):
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    # identical texts are de-duplicated: 4 distinct documents remain
    cfg = load_config(None, [f"ingest.sources=[{src}]"])
    return run_ingest(cfg, workspace)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_train_save_and_reload(kind, snapshot, workspace):
    cfg = load_config(None, [f"tokenizer.kind={kind}", "tokenizer.vocab_size=300",
                             "tokenizer.min_frequency=1"])
    art = run_tokenizer(cfg, workspace, snapshot)
    assert art.kind == kind and 100 < art.vocab_size <= 300
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
