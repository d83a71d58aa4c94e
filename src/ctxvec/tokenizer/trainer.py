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

Reproducible: the folder is named by what training reads (the snapshot's corpus, the tokenizer
config, ``model.max_position``, the ``tokenizers`` version), and a committed folder of that name
is reused, not trained again, so a re-run (a killed ``ctxvec pretrain`` resuming) finds the same
tokenizer, hash and run folder. Training itself gives the same bytes in any process for WordPiece
and byte-level BPE. Upstream, WordPiece gives its ``##`` continuation tokens ids in hash-map
order, and those ids break ties between equally frequent merges, so two trainings could differ
in ids and even in tokens; here a first pass over the corpus finds the ``##c`` tokens the
trainer will make, and they are registered up front, in code point order, so the ids and the
merges are fixed (the vocabulary is the one upstream learns, with one of its tie orders).
Unigram's trainer is not reproducible (hash-map order reaches its EM and pruning: scores differ
by ~1e-3 between runs); it relies on the reuse alone.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import tokenizers
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
# What a trained folder's name covers besides the inputs: bump when training changes its output
# for the same inputs (1: folders named by content; 2: by inputs, WordPiece reproducible).
TRAINING = 2


def _normalizer(tcfg: TokenizerConfig) -> normalizers.Normalizer | None:
    steps: list[normalizers.Normalizer] = []
    if tcfg.normalization != "none":
        steps.append(getattr(normalizers, tcfg.normalization.upper())())
    if tcfg.strip_accents:
        steps += [normalizers.NFD(), normalizers.StripAccents()]
    if tcfg.lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps) if steps else None


def build_tokenizer(tcfg: TokenizerConfig,
                    continuations: list[str] | None = None) -> tuple[Tokenizer, trainers.Trainer]:
    """The untrained tokenizer and its trainer. ``continuations`` (WordPiece): the ``##c``
    tokens to register before training (``continuation_tokens``), so that their ids do not
    depend on hash-map order; the trainer takes them as special tokens, which
    ``drop_added`` turns back into ordinary vocabulary entries after training."""
    specials = SPECIALS + [t for t in tcfg.extra_special_tokens if t not in SPECIALS]
    common = {"vocab_size": tcfg.vocab_size, "special_tokens": specials, "show_progress": False}
    if tcfg.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        common["special_tokens"] = specials + list(continuations or [])
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


class _Continuations:
    """Finds the characters that continue a word somewhere in the documents, as the trainer
    sees them (normalized, then split by the pre-tokenizer): those it makes ``##c`` of.

    Fast on the common case: a document is skipped when every one of its characters is settled
    (each normalizes, on its own, to characters already found inside a word or at which words
    split) and normalization cannot compose characters in it (it is already in NFC/NFKC form).
    Any other document is normalized whole and searched.
    """

    def __init__(self, tok: Tokenizer, form: str):
        self.norm, self.pre = tok.normalizer, tok.pre_tokenizer
        self.composes = form in ("NFC", "NFKC")
        self.form = form
        self.inside: set[str] = set()
        self.settled: set[str] = set()
        self._splits: dict[str, bool] = {}

    def splits(self, c: str) -> bool:
        """The pre-tokenizer splits at ``c`` (a space, punctuation)."""
        if c not in self._splits:
            words = [w for w, _ in self.pre.pre_tokenize_str(f"a{c}a")]
            self._splits[c] = words != [f"a{c}a"]
        return self._splits[c]

    def _normalize(self, text: str) -> str:
        return self.norm.normalize_str(text) if self.norm is not None else text

    def add(self, text: str) -> None:
        chars = set(text)
        if chars <= self.settled and not (
                self.composes and not unicodedata.is_normalized(self.form, text)):
            return
        n = self._normalize(text)
        for c in set(n) - self.inside:
            if self.splits(c):
                continue
            i = n.find(c, 1)
            while i > 0 and self.splits(n[i - 1]):
                i = n.find(c, i + 1)
            if i > 0:
                self.inside.add(c)
        for c in chars - self.settled:
            if all(x in self.inside or self.splits(x) for x in self._normalize(c)):
                self.settled.add(c)


def continuation_tokens(tcfg: TokenizerConfig, corpus: list[str]) -> list[str]:
    """``##c`` for every character ``c`` that continues a word somewhere in the training
    documents, in code point order: the continuation tokens the WordPiece trainer would make
    (in hash-map order), found in one pass over the corpus."""
    tok, _ = build_tokenizer(tcfg)
    found = _Continuations(tok, tcfg.normalization.upper())
    for batch in _Split(corpus, tcfg.heldout_every, tcfg.max_docs).batches():
        for text in batch:
            found.add(text)
    return [f"##{c}" for c in sorted(found.inside)]


def drop_added(tok: Tokenizer, tokens: list[str]) -> Tokenizer:
    """The tokenizer without ``tokens`` among its added (special) tokens; they stay in the
    model's vocabulary, at the same ids."""
    drop = set(tokens)
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in drop]
    return Tokenizer.from_str(json.dumps(data))


def train_tokenizer(tcfg: TokenizerConfig, corpus: list[str], total: int | None = None):
    """-> (trained tokenizer with the BERT template, held-out stats, documents trained on)."""
    continuations = [] if tcfg.kind != "wordpiece" else [
        c for c in continuation_tokens(tcfg, corpus) if c not in tcfg.extra_special_tokens]
    tok, trainer = build_tokenizer(tcfg, continuations)
    split = _Split(corpus, tcfg.heldout_every, tcfg.max_docs)
    tok.train_from_iterator(split.batches(), trainer=trainer, length=total)
    if continuations:
        tok = drop_added(tok, continuations)
        late = {t for t in tok.get_vocab() if t.startswith("##") and len(t) == 3}
        late -= set(continuations)
        if late:  # a character the pass above missed: its id came from hash-map order
            log.warning("tokenizer: %d continuation tokens were not registered before training "
                        "(%s); this vocabulary may not be reproducible", len(late),
                        " ".join(sorted(late)[:10]))
    add_bert_template(tok)
    return tok, tokenizer_stats(tok, split.heldout), split.trained


def training_key(cfg: CtxvecConfig, snapshot: Snapshot) -> str:
    """What a trained tokenizer depends on: the corpus (its snapshot folders, by name), the
    tokenizer config, ``model.max_position`` (in ``tokenizer_config.json``), the ``tokenizers``
    version and ``TRAINING``."""
    return sha256_text(json.dumps({
        "corpus": [Path(c).name for c in snapshot.corpus],
        "tokenizer": cfg.tokenizer.model_dump(mode="json"),
        "max_position": cfg.model.max_position,
        "tokenizers": tokenizers.__version__,
        "training": TRAINING,
    }, sort_keys=True))


def _trained(ws: Workspace, final: Path, key: str) -> TokenizerArtifact | None:
    """The tokenizer already trained under ``key`` in ``final``, if it is committed and whole."""
    m = ws.stage_manifest(final)
    if m is None or m.get("key") != key:
        return None
    folder = ws.local_dir(final)
    tok_file = folder / "tokenizer.json"
    if not tok_file.is_file() or sha256_file(tok_file) != m["sha256"]:
        log.warning("tokenizer: %s does not match its manifest; training it again", folder)
        return None
    return TokenizerArtifact(str(folder), m["sha256"], m["vocab_size"], m["config"]["kind"],
                             m["stats"])


def run_tokenizer(cfg: CtxvecConfig, ws: Workspace, snapshot: Snapshot,
                  model_dir: Path | None = None) -> TokenizerArtifact:
    """Train the recipe's tokenizer (or reuse the one trained on this corpus with this config),
    or with ``tokenizer.source=model`` record the model's own from ``model_dir``: the local
    folder of ``model.init`` (default: ``model.init`` itself, which must then be a folder)."""
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

    # Folder named by what training reads, so a re-run finds it instead of training again.
    key = training_key(cfg, snapshot)
    final = ws.tokenizers / key[:16]
    done = _trained(ws, final, key)
    if done is not None:
        log.info("tokenizer: reusing %s, trained on this corpus with this config", final.name)
        return done
    tok, stats, trained = train_tokenizer(tcfg, snapshot.corpus, snapshot.corpus_docs)
    if trained == 0:
        raise UserInputError("the corpus has no documents to train a tokenizer on")
    with ws.stage_dir(final) as tmp:
        to_fast_tokenizer(tok, cfg.model.max_position).save_pretrained(str(tmp))
        sha = sha256_file(tmp / "tokenizer.json")
        write_manifest(
            tmp, "tokenizer", started, sha256=sha, key=key, snapshot=snapshot.snapshot_id,
            corpus=snapshot.corpus, trained_docs=trained, vocab_size=tok.get_vocab_size(),
            stats=stats, config=tcfg.model_dump(mode="json"),
            tokenizers_version=tokenizers.__version__,
        )
    log.info(
        "tokenizer: %s, %d tokens from %d documents; held-out fertility %.2f, unk rate %.4f, "
        "word coverage %.3f", tcfg.kind, tok.get_vocab_size(), trained, stats["fertility"],
        stats["unk_rate"], stats["word_coverage"],
    )
    return TokenizerArtifact(str(final), sha, tok.get_vocab_size(), tcfg.kind, stats)
