"""Context vectors per word occurrence: one row per word in the corpus, with its char offsets.

The same word gets a different vector in each context ("I saw a saw"), so an index over these
rows answers "where else is this word used the way it is used here?" (``ctxvec.index.senses``).

A word is a run of letters (``\\w+`` that ``str.isalpha``), lowercased: numbers, punctuation,
words shorter than ``min_chars`` and, unless asked for, a small list of English stopwords are
skipped. Words are found on the text rather than through the tokenizer's ``word_ids``, because
each pre-tokenizer splits differently (Metaspace keeps "saw." as one word, WordPiece splits it):
this way a word means the same thing for every tokenizer and for the query sentence
(``sense_query``), and its subwords are still grouped through their char offsets
(``ctxvec.model.context_vectors``). Long texts are cut into overlapping windows like corpus
chunks, so no occurrence is lost.

``run_words`` writes them for a corpus: all documents or a deterministic sample of
``sample_docs``, at most ``max_per_word`` occurrences of each word. Both the sample and the cap
keep the items with the smallest salted hash (of the doc id; of doc id and offset): a uniform
choice that does not depend on corpus order, so page-ordered sources are not biased to their
first pages and a document keeps its place in the sample when the corpus grows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ctxvec.config import CtxvecConfig
from ctxvec.errors import UserInputError
from ctxvec.ingest.corpus import iter_corpus
from ctxvec.model.context_vectors import occurrence_vectors
from ctxvec.model.encoder import Encoder
from ctxvec.workspace import write_manifest

log = logging.getLogger(__name__)

SHARD_GLOB = "part-*.parquet"
DOC_BATCH = 256
_WORD = re.compile(r"\w+")
_SALT = b"ctxvec-words"

# Function words that carry no sense worth searching; kept only with words.stopwords=true.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours ourselves out over
own same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves
""".split())


class WordError(UserInputError):
    """A word the caller asked about that cannot be looked up (absent, or not a word)."""


Occurrence = tuple[str, int, int]  # (word lowercased, start, end): text[start:end].lower() == word


def find_words(text: str, min_chars: int = 3, stopwords: bool = False) -> list[Occurrence]:
    """The indexable words of ``text``, in order."""
    out = []
    for m in _WORD.finditer(text):
        surface = m.group()
        if len(surface) < min_chars or not surface.isalpha():
            continue
        word = surface.lower()
        if stopwords or word not in STOPWORDS:
            out.append((word, m.start(), m.end()))
    return out


def normalize_word(word: str) -> str:
    """A word as the index stores it; anything that is not one run of letters is refused."""
    w = word.strip()
    if not w or not _WORD.fullmatch(w) or not w.isalpha():
        raise WordError(f"{word!r} is not a single word: give one run of letters, e.g. bank")
    return w.lower()


@dataclass(frozen=True)
class WordVectors:
    """Word occurrences of several texts, row by row, with L2-normalised float32 vectors."""

    text: np.ndarray  # (N,) int: which input text
    word: list[str]
    start: np.ndarray  # (N,) int: char offsets in that text
    end: np.ndarray
    vectors: np.ndarray  # (N, D)


def _normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def word_vectors(
    encoder: Encoder,
    texts: Sequence[str],
    layers: Sequence[int] = (-1,),
    *,
    words: Sequence[Sequence[Occurrence]] | None = None,
    min_chars: int = 3,
    stopwords: bool = False,
    max_tokens: int | None = None,
    stride: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> WordVectors:
    """One L2-normalised vector per word occurrence: subword vectors averaged, then ``layers``
    averaged (-1 = last, 0 = embeddings). ``words`` (per text, from ``find_words``) lets a caller
    keep only some occurrences; by default every indexable word is taken."""
    if words is None:
        words = [find_words(t, min_chars, stopwords) for t in texts]
    if len(words) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(words)} word lists")
    spans = [[(s, e) for _, s, e in ws] for ws in words]
    vecs = occurrence_vectors(encoder, texts, spans, layers, max_tokens, stride, batch_size,
                              progress)
    flat = [o for ws in words for o in ws]
    return WordVectors(
        text=np.repeat(np.arange(len(texts)), [len(ws) for ws in words]),
        word=[w for w, _, _ in flat],
        start=np.asarray([s for _, s, _ in flat], dtype=np.int64),
        end=np.asarray([e for _, _, e in flat], dtype=np.int64),
        vectors=_normalize(vecs),
    )


def sense_query(
    encoder: Encoder,
    word: str,
    context: str,
    layers: Sequence[int] = (-1,),
    occurrence: int = 1,
    max_tokens: int | None = None,
    stride: int | None = None,
) -> np.ndarray:
    """The context vector (D,) of ``word`` in ``context`` (its ``occurrence``-th appearance,
    case-insensitive, whole words only), computed exactly as ``word_vectors`` computes the
    indexed ones: same words, pooling, layers and windows (pass the index's)."""
    w = normalize_word(word)
    if not context or not context.strip():
        raise WordError("the context sentence is empty")
    found = [m for m in _WORD.finditer(context) if m.group().lower() == w]
    if not found:
        raise WordError(f"{word!r} does not occur in the context {_clip(context)!r}")
    if not 1 <= occurrence <= len(found):
        raise WordError(f"{word!r} occurs {len(found)} time(s) in the context: occurrence "
                        f"{occurrence} does not exist (count from 1)")
    m = found[occurrence - 1]
    vecs = word_vectors(encoder, [context], layers, words=[[(w, m.start(), m.end())]],
                        max_tokens=max_tokens, stride=stride)
    return vecs.vectors[0]


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# --- run_words: a corpus -> Parquet shards ------------------------------------------------


def words_schema(dim: int, dtype: str = "float32") -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        ("doc_id", pa.string()),
        ("word", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("model_version", pa.string()),
        ("vector", pa.list_(value, dim)),
    ])


def window_settings(cfg: CtxvecConfig, encoder: Encoder) -> tuple[int, int]:
    """(max_tokens, stride) of the corpus chunks, which the word windows share."""
    max_tokens = min(cfg.embed.max_tokens or encoder.settings.max_length,
                     encoder.settings.max_length)
    return max_tokens, min(cfg.embed.stride, max_tokens // 2)


def _priority(*parts: object) -> int:
    """A salted 63-bit hash: the smaller, the earlier an item is kept."""
    key = "\x1f".join(str(p) for p in parts).encode("utf-8")
    digest = hashlib.blake2b(key, digest_size=8, key=_SALT).digest()
    return int.from_bytes(digest, "big") >> 1


def _kth_smallest(values: np.ndarray, k: int) -> int | None:
    """The k-th smallest value, or None when there are at most k (keep them all)."""
    if len(values) <= k:
        return None
    return int(np.partition(values, k - 1)[k - 1])


def _sample_threshold(corpus: Sequence[str], sample_docs: int | None) -> int | None:
    """Documents whose priority is at most this form the sample (None: every document)."""
    if sample_docs is None:
        return None
    prios = [_priority(d) for batch in iter_corpus(corpus, ("doc_id",))
             for d in batch.column(0).to_pylist()]
    return _kth_smallest(np.asarray(prios, dtype=np.int64), sample_docs)


def _iter_docs(corpus: Sequence[str], doc_cap: int | None, batch_size: int = DOC_BATCH
               ) -> Iterator[tuple[list[str], list[str]]]:
    """(doc ids, texts) of the sampled documents, in corpus order."""
    for batch in iter_corpus(corpus, ("doc_id", "text"), batch_size=batch_size):
        ids = batch.column(0).to_pylist()
        texts = [t or "" for t in batch.column(1).to_pylist()]
        if doc_cap is not None:
            keep = [i for i, d in enumerate(ids) if _priority(d) <= doc_cap]
            ids, texts = [ids[i] for i in keep], [texts[i] for i in keep]
        if ids:
            yield ids, texts


def _word_caps(docs: Iterator[tuple[list[str], list[str]]], min_chars: int, stopwords: bool,
               cap: int) -> tuple[dict[str, int], int]:
    """-> ({word: largest kept priority} for the words seen more than ``cap`` times, docs)."""
    vocab: dict[str, int] = {}
    wid_parts: list[np.ndarray] = []  # numpy per batch: a Python int list per word is 4x bigger
    prio_parts: list[np.ndarray] = []
    n_docs = 0
    for ids, texts in docs:
        n_docs += len(ids)
        occ = [(w, d, s) for d, text in zip(ids, texts, strict=True)
               for w, s, _ in find_words(text, min_chars, stopwords)]
        wid_parts.append(np.asarray([vocab.setdefault(w, len(vocab)) for w, _, _ in occ],
                                    dtype=np.int64))
        prio_parts.append(np.asarray([_priority(d, s) for _, d, s in occ], dtype=np.int64))
    wid = np.concatenate([np.zeros(0, np.int64), *wid_parts])
    prio = np.concatenate([np.zeros(0, np.int64), *prio_parts])
    over = np.flatnonzero(np.bincount(wid, minlength=len(vocab)) > cap)
    if not len(over):
        return {}, n_docs
    mask = np.isin(wid, over)
    wid, prio = wid[mask], prio[mask]
    order = np.lexsort((prio, wid))  # by word, then priority
    wid, prio = wid[order], prio[order]
    first = np.searchsorted(wid, over)
    names = list(vocab)
    return {names[w]: int(prio[f + cap - 1]) for w, f in zip(over, first, strict=True)}, n_docs


class _ShardWriter:
    """Parquet shards ``part-NNNNN.parquet``, each written under a temporary name and renamed
    when complete, so a reader never sees half a shard."""

    def __init__(self, folder: Path, schema: pa.Schema):
        self.folder, self.schema = folder, schema
        self.names: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            name = f"part-{len(self.names):05d}.parquet"
            self._tmp = self.folder / f".{name}.tmp"
            self._writer = pq.ParquetWriter(self._tmp, self.schema)
            self.names.append(name)
        self._writer.write_table(table)

    def close_shard(self) -> None:
        if self._writer is not None and self._tmp is not None:
            self._writer.close()
            os.replace(self._tmp, self.folder / self.names[-1])
            self._writer = self._tmp = None


def run_words(
    cfg: CtxvecConfig, encoder: Encoder, corpus: Sequence[str], out_dir: str | Path,
    model_version: str,
) -> dict:
    """Write one row per kept word occurrence of the corpus (snapshot folders, as
    ``Snapshot.corpus``) into ``out_dir``: Parquet shards of doc_id, word, start, end,
    model_version, vector, and a manifest (returned). The caller stages ``out_dir``."""
    started = time.time()
    wcfg, ecfg = cfg.embed.words, cfg.embed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob(SHARD_GLOB), *out.glob(".part-*.tmp")]:  # a rerun starts afresh
        old.unlink()
    max_tokens, stride = window_settings(cfg, encoder)
    np_dtype = np.float16 if ecfg.dtype == "float16" else np.float32

    # Two cheap passes without the model: which documents, then which occurrences of each word.
    doc_cap = _sample_threshold(corpus, wcfg.sample_docs)
    caps, n_docs = _word_caps(_iter_docs(corpus, doc_cap), wcfg.min_chars, wcfg.stopwords,
                              wcfg.max_per_word)
    log.info("words: %d documents, %d words capped at %d occurrences", n_docs, len(caps),
             wcfg.max_per_word)

    writer = _ShardWriter(out, words_schema(encoder.dim, ecfg.dtype))
    rows, shard_docs, distinct = 0, 0, set()
    bar = tqdm(total=n_docs, desc="word vectors", unit="doc")
    for ids, texts in _iter_docs(corpus, doc_cap, min(DOC_BATCH, ecfg.shard_docs)):
        kept = [[(w, s, e) for w, s, e in find_words(t, wcfg.min_chars, wcfg.stopwords)
                 if w not in caps or _priority(d, s) <= caps[w]]
                for d, t in zip(ids, texts, strict=True)]
        wv = word_vectors(encoder, texts, wcfg.layers, words=kept, max_tokens=max_tokens,
                          stride=stride, batch_size=ecfg.batch_size)
        if len(wv.word):
            writer.write(pa.table({
                "doc_id": [ids[i] for i in wv.text],
                "word": wv.word,
                "start": pa.array(wv.start, pa.int32()),
                "end": pa.array(wv.end, pa.int32()),
                "model_version": [model_version] * len(wv.word),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(wv.vectors.astype(np_dtype).ravel()), encoder.dim),
            }, schema=writer.schema))
            rows += len(wv.word)
            distinct.update(wv.word)
        shard_docs += len(ids)
        if shard_docs >= ecfg.shard_docs:
            writer.close_shard()
            shard_docs = 0
        bar.update(len(ids))
    if not writer.names:  # nothing to keep: one empty shard still tells readers the schema
        writer.write(writer.schema.empty_table())
    writer.close_shard()
    bar.close()
    log.info("words: %d occurrences of %d words from %d documents in %.1fs", rows,
             len(distinct), n_docs, time.time() - started)
    return write_manifest(
        out, "words", started, model_version=model_version, corpus=list(corpus),
        rows=rows, docs=n_docs, words=len(distinct), dim=encoder.dim, dtype=ecfg.dtype,
        layers=list(wcfg.layers), min_chars=wcfg.min_chars, stopwords=wcfg.stopwords,
        max_per_word=wcfg.max_per_word, capped_words=len(caps), sample_docs=wcfg.sample_docs,
        max_tokens=max_tokens, stride=stride, precision=encoder.precision, shards=writer.names,
    )


def read_words(folder: str | Path) -> tuple[np.ndarray, pa.Table]:
    """-> (float32 vectors (N, D), the other columns) of a words folder's shards."""
    shards = sorted(Path(folder).glob(SHARD_GLOB))
    if not shards:
        raise FileNotFoundError(f"no word-vector shards ({SHARD_GLOB}) in {folder}")
    table = pa.concat_tables([pq.read_table(s) for s in shards])
    col = table.column("vector").combine_chunks()
    dim = col.type.list_size
    vecs = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return vecs, table.drop_columns(["vector"])
