"""``run_tokenizer``: learn a WordPiece or byte-level BPE vocabulary with HF ``tokenizers``.

Both kinds use BERT's special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) and its ``[CLS] A [SEP]``
template, so either vocabulary plugs into the same BERT-family encoders. The result is saved as a
``transformers`` fast-tokenizer folder (``tokenizer.json`` inside). With ``tokenizer.source=model``
the stage trains nothing and records the pretrained checkpoint's own tokenizer instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from ctxvec.artifacts import Snapshot, TokenizerArtifact
from ctxvec.config import CtxvecConfig, TokenizerConfig
from ctxvec.ingest.snapshot import snapshot_docs_path
from ctxvec.model.refs import ModelRefError, resolve_model_ref
from ctxvec.workspace import Workspace, sha256_file, sha256_text, write_manifest

log = logging.getLogger(__name__)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def iter_snapshot_texts(snapshot_path: str | Path, limit: int | None = None) -> Iterator[str]:
    """Stream texts from a snapshot one row group at a time."""
    pf = pq.ParquetFile(snapshot_docs_path(snapshot_path))
    n = 0
    for batch in pf.iter_batches(columns=["text"], batch_size=1024):
        for text in batch.column(0).to_pylist():
            yield text
            n += 1
            if limit is not None and n >= limit:
                return


def build_tokenizer(tcfg: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    if tcfg.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=tcfg.lowercase, clean_text=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=tcfg.vocab_size,
            min_frequency=tcfg.min_frequency,
            special_tokens=SPECIALS,
            show_progress=False,
        )
    else:  # byte-level BPE: every byte is in the alphabet, so nothing is ever unknown
        tok = Tokenizer(models.BPE(unk_token=None))
        norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if tcfg.lowercase else [])
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=tcfg.vocab_size,
            min_frequency=tcfg.min_frequency,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    return tok, trainer


def _add_template(tok: Tokenizer) -> None:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def to_fast_tokenizer(tok: Tokenizer, max_length: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def tokenizer_stats(tok: Tokenizer, texts: list[str]) -> dict[str, float]:
    """Fertility (tokens per whitespace word) and unknown-token rate on a sample."""
    if not texts:
        return {"fertility": 0.0, "unk_rate": 0.0}
    encs = tok.encode_batch(texts, add_special_tokens=False)
    n_tokens = sum(len(e.ids) for e in encs)
    n_words = sum(len(t.split()) for t in texts)
    unk = tok.token_to_id("[UNK]")
    n_unk = sum(e.ids.count(unk) for e in encs) if unk is not None else 0
    return {
        "fertility": n_tokens / max(n_words, 1),
        "unk_rate": n_unk / max(n_tokens, 1),
    }


def run_tokenizer(cfg: CtxvecConfig, ws: Workspace, snapshot: Snapshot) -> TokenizerArtifact:
    started = time.time()
    tcfg = cfg.tokenizer
    if tcfg.source == "model":
        model_dir = resolve_model_ref(cfg.model.init, ws.root)
        tok_file = model_dir / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelRefError(f"{model_dir} has no tokenizer.json (a fast tokenizer is required)")
        vocab = Tokenizer.from_file(str(tok_file)).get_vocab_size()
        log.info("tokenizer: using %s's own tokenizer (%d tokens)", cfg.model.init, vocab)
        return TokenizerArtifact(str(model_dir), sha256_file(tok_file), vocab, "model")

    tok, trainer = build_tokenizer(tcfg)
    tok.train_from_iterator(
        iter_snapshot_texts(snapshot.path, tcfg.max_docs), trainer=trainer, length=snapshot.kept
    )
    _add_template(tok)
    # A held-out-ish sample for stats: the tail of the snapshot (the head was trained on first).
    sample = list(iter_snapshot_texts(snapshot.path))[-200:]
    stats = tokenizer_stats(tok, sample)
    # Folder named by the learned vocabulary, so the same tokenizer is stored once.
    key = sha256_text(tok.to_str())[:16]
    final = ws.tokenizers / key
    with ws.stage_dir(final) as tmp:
        to_fast_tokenizer(tok, cfg.model.max_position).save_pretrained(str(tmp))
        sha = sha256_file(tmp / "tokenizer.json")
        write_manifest(
            tmp, "tokenizer", started, sha256=sha, snapshot=snapshot.snapshot_id,
            vocab_size=tok.get_vocab_size(), stats=stats, config=tcfg.model_dump(mode="json"),
        )
    log.info(
        "tokenizer: %s, %d tokens, fertility %.2f, unk rate %.4f",
        tcfg.kind, tok.get_vocab_size(), stats["fertility"], stats["unk_rate"],
    )
    return TokenizerArtifact(str(final), sha, tok.get_vocab_size(), tcfg.kind)
