"""The sense index: word-occurrence vectors, searched among the occurrences of one word.

Sense search asks "where else is *bank* used the way it is used in this sentence?", so a search
only ever compares the query with the occurrences of the same word. Rows are stored sorted by
word, which makes each word's occurrences one contiguous slice of ``vectors.npy``; a search is an
exact inner product over that slice (at most ``words.max_per_word`` rows, 1,000 by default). That
beats restricting a FAISS search with an ``IDSelectorBatch``/``IDSelectorRange``: a selector
still walks all N ids and gives up FAISS's BLAS path (11 ms for 300k x 384 vectors and a
1,000-row word, against 0.05 ms for the slice, on a 2-core CPU), and on an IVF index it would
also lose the word's rows that sit in unprobed lists. Exact also means no recall to measure.

The folder also holds a FAISS index over every occurrence (``search_any``: the nearest uses of
*any* word, e.g. "shore" for the river sense of "bank"), built like the chunk indexes and with its
recall@10 against exact search in the manifest. Files::

    vectors.npy          (N, D) float32/float16, rows sorted by (word, doc_id, start)
    occurrences.parquet  id, doc_id, word, start, end (id = row of vectors.npy)
    words.parquet        word, offset, count: each word's slice
    index.faiss          all N rows, inner product (+ index.json, as FaissIndex saves it)
    manifest.json        counts, dims, model version, the words' settings (layers, windows)
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ctxvec.config import IndexConfig
from ctxvec.embed.corpus import WORDS_DIR
from ctxvec.embed.words import STOPWORDS, WordError, normalize_word, read_words
from ctxvec.index.faiss_index import FaissIndex, resolve_factory
from ctxvec.index.recall import recall_at_k
from ctxvec.workspace import Workspace, read_json, write_manifest

log = logging.getLogger(__name__)

SENSES_DIR = "senses"  # inside a model version's index folder
VECTORS_FILE = "vectors.npy"
OCCURRENCES_FILE = "occurrences.parquet"
WORDS_FILE = "words.parquet"
# Settings of the words folder a query must reuse to get comparable vectors.
_WORDS_SETTINGS = ("corpus", "layers", "max_tokens", "stride", "min_chars", "stopwords",
                   "sample_docs", "max_per_word", "dtype", "docs", "precision")


@dataclass(frozen=True)
class SenseOccurrence:
    doc_id: str
    word: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


def build_sense_index(
    words_dir: str | Path, out_dir: str | Path, cfg: IndexConfig | None = None
) -> dict:
    """A words folder (``run_words``) -> a sense index folder; returns its manifest.

    ``cfg`` (the recipe's ``index`` section) picks the FAISS index as for chunks (``auto``:
    exact up to ``auto_exact_max`` vectors, IVF above). ``out_dir`` (normally ``<index
    folder>/senses``) appears complete or not at all."""
    started = time.time()
    cfg = cfg or IndexConfig()
    words_dir, out_dir = Path(words_dir), Path(out_dir)
    words_manifest = read_json(words_dir / "manifest.json")
    vectors, meta = read_words(words_dir)
    versions = set(meta.column("model_version").unique().to_pylist())
    if len(versions) > 1:
        raise ValueError(f"word vectors mix model versions {sorted(versions)}: refusing to index")

    # Sort by word so that each word's rows are one slice; ids are the sorted row numbers.
    order = _sort_order(meta)
    meta = meta.take(pa.array(order))
    store = vectors[order].astype(  # stored in the shards' type: float16 halves the file
        np.float16 if words_manifest["dtype"] == "float16" else np.float32, copy=False)
    vectors = store.astype(np.float32, copy=False)  # FAISS and recall work on float32
    ids = np.arange(len(vectors), dtype=np.int64)
    words, offsets, counts = _slices(meta.column("word").to_numpy(zero_copy_only=False))

    chosen = resolve_factory(cfg.factory, len(vectors), vectors.shape[1], cfg)
    t0 = time.perf_counter()
    index = FaissIndex.build(vectors, ids, chosen, train_size=cfg.train_sample,
                             nprobe=cfg.nprobe, ef_search=cfg.ef_search)
    build_s = time.perf_counter() - t0
    recall = recall_at_k(index, vectors, ids, cfg.recall_sample)
    # Staged next to its final place, renamed when complete (Workspace only lends the logic).
    with Workspace(out_dir.parent).stage_dir(out_dir) as tmp:
        np.save(tmp / VECTORS_FILE, store)
        pq.write_table(pa.table({
            "id": pa.array(ids),
            "doc_id": meta.column("doc_id"),
            "word": meta.column("word"),
            "start": meta.column("start"),
            "end": meta.column("end"),
        }), tmp / OCCURRENCES_FILE)
        pq.write_table(pa.table({"word": words, "offset": pa.array(offsets, pa.int64()),
                                 "count": pa.array(counts, pa.int64())}), tmp / WORDS_FILE)
        index.save(tmp)
        manifest = write_manifest(
            tmp, "senses", started, factory=chosen, metric="inner_product",
            dim=int(vectors.shape[1]), count=len(vectors), words=len(words),
            model_version=str(words_manifest["model_version"]),
            build_seconds=round(build_s, 3), recall_at_10=recall,
            search="exact inner product over the word's rows", words_dir=str(words_dir),
            **{k: words_manifest.get(k) for k in _WORDS_SETTINGS},
        )
    log.info("senses: %d occurrences of %d words, %s recall@10 %.3f", len(vectors), len(words),
             chosen, recall)
    return manifest


def index_senses(embeddings_dir: str | Path, index_dir: str | Path,
                 cfg: IndexConfig | None = None) -> dict | None:
    """``run_index``'s step for word vectors: when the embeddings folder holds them
    (``embed.words.enabled``), build ``<index_dir>/senses`` and return its manifest; else None."""
    words = Path(embeddings_dir) / WORDS_DIR
    if not (words / "manifest.json").is_file():
        return None
    return build_sense_index(words, Path(index_dir) / SENSES_DIR, cfg)


def _sort_order(meta: pa.Table) -> np.ndarray:
    """Row order by (word, doc_id, start): words contiguous, and a stable, readable order."""
    keys = pa.table({k: meta.column(k) for k in ("word", "doc_id", "start")})
    return pc.sort_indices(keys, sort_keys=[("word", "ascending"), ("doc_id", "ascending"),
                                            ("start", "ascending")]).to_numpy()


def _slices(sorted_words: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Sorted word per row -> (distinct words, first row of each, row count of each)."""
    if not len(sorted_words):
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.flatnonzero(sorted_words[1:] != sorted_words[:-1]) + 1
    offsets = np.concatenate([[0], change]).astype(np.int64)
    counts = np.diff(np.concatenate([offsets, [len(sorted_words)]])).astype(np.int64)
    return [str(w) for w in sorted_words[offsets]], offsets, counts


class SenseIndex:
    """A loaded sense index folder: per-word exact search, and FAISS over every occurrence."""

    def __init__(self, folder: Path, manifest: dict, vectors: np.ndarray, occurrences: pa.Table,
                 slices: dict[str, tuple[int, int]]):
        self.folder = folder
        self.manifest = manifest
        self.vectors = vectors  # (N, D), memory-mapped: a search reads one word's rows
        self.slices = slices
        self.doc_ids = np.asarray(occurrences.column("doc_id").to_pylist(), dtype=object)
        self.words = np.asarray(occurrences.column("word").to_pylist(), dtype=object)
        self.starts = occurrences.column("start").to_numpy()
        self.ends = occurrences.column("end").to_numpy()
        self._faiss: FaissIndex | None = None

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> SenseIndex:
        folder = Path(folder)
        if not (folder / "manifest.json").is_file():
            raise FileNotFoundError(f"no sense index in {folder} (no manifest.json)")
        manifest = read_json(folder / "manifest.json")
        vectors = np.load(folder / VECTORS_FILE, mmap_mode="r" if mmap else None)
        occurrences = pq.read_table(folder / OCCURRENCES_FILE)
        words = pq.read_table(folder / WORDS_FILE).to_pydict()
        slices = {w: (int(o), int(c)) for w, o, c in zip(words["word"], words["offset"],
                                                           words["count"], strict=True)}
        return cls(folder, manifest, vectors, occurrences, slices)

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __contains__(self, word: str) -> bool:
        return word in self.slices

    def occurrences(self, word: str) -> int:
        """How many occurrences of ``word`` the index holds (0 if none)."""
        return self.slices.get(word, (0, 0))[1]

    def check_word(self, word: str) -> str:
        """``word`` normalised, or a WordError that says why it cannot be searched."""
        w = normalize_word(word)
        if w in self.slices:
            return w
        why = ""
        min_chars = self.manifest.get("min_chars")
        if min_chars and len(w) < min_chars:
            why = f" (words shorter than {min_chars} characters are not indexed)"
        elif w in STOPWORDS and not self.manifest.get("stopwords"):
            why = " (stopwords are not indexed; embed.words.stopwords=true keeps them)"
        raise WordError(f"{word!r} does not occur in the indexed sample; "
                        f"{len(self.slices)} words are indexed{why}")

    def search(self, word: str, vector: np.ndarray, k: int = 10) -> list[SenseOccurrence]:
        """The ``k`` occurrences of ``word`` whose context vectors are closest to ``vector``
        (inner product = cosine: every vector is normalised), best first."""
        w = self.check_word(word)
        query = self._query(vector)
        offset, n = self.slices[w]
        scores = np.asarray(self.vectors[offset : offset + n], dtype=np.float32) @ query  # (n,)
        k = max(1, min(k, n))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]  # best first; ties by id, reproducibly
        return [self._occurrence(offset + int(i), float(scores[i])) for i in top]

    def search_any(self, vector: np.ndarray, k: int = 10) -> list[SenseOccurrence]:
        """The ``k`` nearest occurrences of any word (through the FAISS index)."""
        if self._faiss is None:  # loaded on first use: per-word search never needs it
            self._faiss = FaissIndex.load(self.folder, self.manifest["factory"])
        scores, ids = self._faiss.search(self._query(vector)[None, :], k)
        return [self._occurrence(int(i), float(s))
                for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]

    def _query(self, vector: np.ndarray) -> np.ndarray:
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise WordError(f"query vector has dimension {q.shape[0]}, the index {self.dim}")
        return q

    def _occurrence(self, row: int, score: float) -> SenseOccurrence:
        return SenseOccurrence(str(self.doc_ids[row]), str(self.words[row]),
                               int(self.starts[row]), int(self.ends[row]), score)
