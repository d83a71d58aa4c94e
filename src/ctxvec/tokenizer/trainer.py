"""``run_tokenizer``: learn a WordPiece, byte-level BPE or Unigram vocabulary with HF
``tokenizers`` from the corpus stream.

Every kind uses BERT's special tokens ([PAD] [UNK] [CLS] [SEP] [MASK], plus any extra ones) and
BERT's ``[CLS] A [SEP] B [SEP]`` template, so any vocabulary plugs into the same BERT-family
encoders. The result is a ``transformers`` fast-tokenizer folder (``tokenizer.json`` inside).
One document in ``heldout_every`` is kept out of training and measures the vocabulary: fertility
(tokens per word), unknown-token rate and word coverage (words that are one token).
With ``tokenizer.source=model`` nothing is trained: the checkpoint's own tokenizer is recorded,
read from the model's local folder (the tokenizer stage resolves ``model.init`` into one: this
layer sits below the model and the registry, and never resolves references itself).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

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
from ctxvec.errors import UserInputError
from ctxvec.ingest.corpus import iter_corpus
from ctxvec.refs import ModelRefError
from ctxvec.workspace import Workspace, sha256_file, sha256_text, write_manifest

log = logging.getLogger(__name__)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_HELDOUT = 500


def _normalizer(tcfg: TokenizerConfig) -> normalizers.Normalizer | None:
    steps: list[normalizers.Normalizer] = []
    if tcfg.normalization != "none":
        steps.append(getattr(normalizers, tcfg.normalization.upper())())
    if tcfg.strip_accents:
        steps += [normalizers.NFD(), normalizers.StripAccents()]
    if tcfg.lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps) if steps else None


def build_tokenizer(tcfg: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    specials = SPECIALS + [t for t in tcfg.extra_special_tokens if t not in SPECIALS]
    common = {"vocab_size": tcfg.vocab_size, "special_tokens": specials, "show_progress": False}
    if tcfg.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(min_frequency=tcfg.min_frequency, **common)
    elif tcfg.kind == "bpe":  # byte-level: every byte is in the alphabet, nothing is unknown
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            min_frequency=tcfg.min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **common,
        )
    else:  # unigram (Kudo 2018), SentencePiece-style word boundaries
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(unk_token="[UNK]", **common)
    norm = _normalizer(tcfg)
    if norm is not None:
        tok.normalizer = norm
    return tok, trainer


def add_bert_template(tok: Tokenizer) -> None:
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
    """On held-out texts: fertility (tokens per whitespace word), unknown-token rate, and word
    coverage (share of the pre-tokenizer's words that are one known token)."""
    if not texts:
        return {"fertility": 0.0, "unk_rate": 0.0, "word_coverage": 0.0, "heldout_docs": 0}
    encs = tok.encode_batch(texts, add_special_tokens=False)
    unk = tok.token_to_id("[UNK]")
    n_tokens = n_unk = n_words = n_whole = 0
    for e in encs:
        n_tokens += len(e.ids)
        if unk is not None:
            n_unk += e.ids.count(unk)
        per_word: dict[int, list[int]] = {}  # word -> [token count, a token id]
        for w, i in zip(e.word_ids, e.ids, strict=True):
            if w is not None:
                per_word.setdefault(w, [0, i])[0] += 1
        n_words += len(per_word)
        n_whole += sum(1 for c, i in per_word.values() if c == 1 and i != unk)
    return {
        "fertility": n_tokens / max(sum(len(t.split()) for t in texts), 1),
        "unk_rate": n_unk / max(n_tokens, 1),
        "word_coverage": n_whole / max(n_words, 1),
        "heldout_docs": len(texts),
    }


class _Split:
    """Streams training batches and keeps every ``every``-th document aside as held-out."""

    def __init__(self, corpus: list[str], every: int, limit: int | None):
        self.corpus, self.every, self.limit = corpus, every, limit
        self.heldout: list[str] = []
        self.trained = 0

    def batches(self) -> Iterator[list[str]]:
        n = 0
        for batch in iter_corpus(self.corpus, ("text",), batch_size=1000):
            texts = batch.column(0).to_pylist()
            train = []
            for t in texts:
                n += 1
                if n % self.every == 0:
                    if len(self.heldout) < MAX_HELDOUT:
                        self.heldout.append(t)
                else:
                    train.append(t)
            if self.limit is not None:
                train = train[: max(self.limit - self.trained, 0)]
            self.trained += len(train)
            if train:
                yield train
            if self.limit is not None and self.trained >= self.limit:
                return


def train_tokenizer(tcfg: TokenizerConfig, corpus: list[str], total: int | None = None):
    """-> (trained tokenizer with the BERT template, held-out stats, documents trained on)."""
    tok, trainer = build_tokenizer(tcfg)
    split = _Split(corpus, tcfg.heldout_every, tcfg.max_docs)
    tok.train_from_iterator(split.batches(), trainer=trainer, length=total)
    add_bert_template(tok)
    return tok, tokenizer_stats(tok, split.heldout), split.trained


def run_tokenizer(cfg: CtxvecConfig, ws: Workspace, snapshot: Snapshot,
                  model_dir: Path | None = None) -> TokenizerArtifact:
    """Train the recipe's tokenizer, or with ``tokenizer.source=model`` record the model's own
    from ``model_dir``: the local folder of ``model.init`` (default: ``model.init`` itself, which
    must then be a folder)."""
    started = time.time()
    tcfg = cfg.tokenizer
    if tcfg.source == "model":
        model_dir = Path(model_dir or cfg.model.init)
        tok_file = model_dir / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelRefError(f"{model_dir} has no tokenizer.json (a fast tokenizer is needed)")
        vocab = Tokenizer.from_file(str(tok_file)).get_vocab_size()
        log.info("tokenizer: using %s's own tokenizer (%d tokens)", cfg.model.init, vocab)
        return TokenizerArtifact(str(model_dir), sha256_file(tok_file), vocab, "model", {})

    tok, stats, trained = train_tokenizer(tcfg, snapshot.corpus, snapshot.corpus_docs)
    if trained == 0:
        raise UserInputError("the corpus has no documents to train a tokenizer on")
    # Folder named by the learned vocabulary, so one vocabulary is stored once.
    final = ws.tokenizers / sha256_text(tok.to_str())[:16]
    with ws.stage_dir(final) as tmp:
        to_fast_tokenizer(tok, cfg.model.max_position).save_pretrained(str(tmp))
        sha = sha256_file(tmp / "tokenizer.json")
        write_manifest(
            tmp, "tokenizer", started, sha256=sha, snapshot=snapshot.snapshot_id,
            corpus=snapshot.corpus, trained_docs=trained, vocab_size=tok.get_vocab_size(),
            stats=stats, config=tcfg.model_dump(mode="json"),
        )
    log.info(
        "tokenizer: %s, %d tokens from %d documents; held-out fertility %.2f, unk rate %.4f, "
        "word coverage %.3f", tcfg.kind, tok.get_vocab_size(), trained, stats["fertility"],
        stats["unk_rate"], stats["word_coverage"],
    )
    return TokenizerArtifact(str(final), sha, tok.get_vocab_size(), tcfg.kind, stats)
