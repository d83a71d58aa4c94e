"""Stable int64 ids for chunks, and the id map (``ids.parquet``) that turns them back into
documents, offsets and metadata, and metadata filters into the ids they allow.

Why hashes and not row numbers: an id must mean the same chunk in every index built from any
version of the corpus, so that a chunk can be removed or replaced (upsert) by id, and so that two
indexes can be compared id for id. The id of a chunk is the first 63 bits of
``blake2b(doc_id + NUL + chunk number)``: non-negative (FAISS uses -1 for "no result"), the same
on every machine and Python version. Two chunks hashing to one id is astronomically unlikely
(about n^2 / 2^64) but is still checked, and fails loudly rather than merging two chunks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctxvec.errors import UserInputError
from ctxvec.ingest.corpus import iter_corpus

IDS_FILE = "ids.parquet"
CHUNK_COLUMNS = ("id", "doc_id", "chunk", "start", "end")
CORPUS_COLUMNS = ("doc_id", "text", "title", "source", "content_hash", "ingested_at", "snapshot")
_MASK63 = (1 << 63) - 1

Filters = Mapping[str, str | Sequence[str]]
# Keys whose values are file paths: a filter value matches by trailing path components too
PATH_KEYS = frozenset({"source"})


class FilterError(UserInputError):
    """A metadata filter the caller can fix (unknown key, malformed value)."""


def path_matches(stored: str, wanted: str) -> bool:
    """Does the filter value ``wanted`` name the file ``stored``? Yes when it is the stored
    value, or its trailing path components: ``wiki_00.gz``, ``demo/wiki_00.gz`` and
    ``./data/demo/wiki_00.gz`` all name ``/home/u/data/demo/wiki_00.gz``; ``00.gz`` does not.
    Ingest stores the absolute path (or URI) it read, which a user rarely types."""
    stored, wanted = stored.replace("\\", "/"), wanted.replace("\\", "/")
    while wanted.startswith("./"):
        wanted = wanted[2:]
    return bool(wanted) and (stored == wanted or stored.endswith("/" + wanted))


def chunk_id(doc_id: str, chunk: int) -> int:
    digest = hashlib.blake2b(f"{doc_id}\x00{chunk}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _MASK63


def chunk_ids(doc_ids: Sequence[str], chunks: Sequence[int]) -> np.ndarray:
    """(doc_id, chunk) pairs -> int64 ids (N,); raises if two different chunks share an id."""
    ids = np.fromiter((chunk_id(d, int(c)) for d, c in zip(doc_ids, chunks, strict=True)),
                      dtype=np.int64, count=len(doc_ids))
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if len(uniq) != len(ids):
        dup = int(uniq[counts > 1][0])
        rows = np.flatnonzero(ids == dup)
        pairs = [(doc_ids[r], int(chunks[r])) for r in rows]
        if len(set(pairs)) == 1:
            raise ValueError(f"chunk {pairs[0]} appears {len(rows)} times in the embeddings")
        raise RuntimeError(f"63-bit id collision between chunks {pairs}: refusing to merge them")
    return ids


def chunk_metadata(
    corpus: Sequence[str | Path],
    doc_ids: Sequence[str],
    starts: Sequence[int],
    ends: Sequence[int],
    columns: Sequence[str],
    with_text: bool,
) -> tuple[dict[str, list[str]], list[str] | None]:
    """One pass over the corpus -> (metadata column -> value per chunk, chunk texts or None).

    A chunk's text is ``text[start:end]`` of its document's newest version, the same text the
    embedding was computed from; metadata values are kept as strings (what a filter compares).
    """
    bad = [c for c in columns if c not in CORPUS_COLUMNS or c in ("doc_id", "text")]
    if bad:
        allowed = [c for c in CORPUS_COLUMNS if c not in ("doc_id", "text")]
        raise UserInputError(f"index.metadata: {bad} are not document fields; use some of "
                             f"{allowed}")
    rows_of: dict[str, list[int]] = {}
    for row, d in enumerate(doc_ids):
        rows_of.setdefault(d, []).append(row)
    meta: dict[str, list[str]] = {c: [""] * len(doc_ids) for c in columns}
    texts: list[str] | None = [""] * len(doc_ids) if with_text else None
    wanted = ("doc_id", *columns, *(("text",) if with_text else ()))
    for batch in iter_corpus(corpus, wanted):
        cols = {name: batch.column(i).to_pylist() for i, name in enumerate(wanted)}
        for j, d in enumerate(cols["doc_id"]):
            for row in rows_of.get(d, ()):
                for c in columns:
                    value = cols[c][j]
                    meta[c][row] = "" if value is None else str(value)
                if texts is not None:
                    texts[row] = cols["text"][j][starts[row]:ends[row]]
    return meta, texts


def id_map_table(ids: np.ndarray, chunks: pa.Table, metadata: Mapping[str, list[str]]) -> pa.Table:
    """The ``ids.parquet`` table: id, doc_id, chunk, start, end, then each metadata column."""
    table = pa.table({"id": pa.array(ids, pa.int64())})
    for col in CHUNK_COLUMNS[1:]:
        table = table.append_column(col, chunks.column(col))
    for col, values in metadata.items():
        table = table.append_column(col, pa.array(values, pa.string()))
    return table


class IdMap:
    """The id map of one index, read once and never changed: safe to share between threads.

    Rows are sorted by id, so an id's row is a binary search away; each metadata column is held
    dictionary-encoded (value -> code), so a filter is an ``isin`` over small integers.
    """

    def __init__(self, table: pa.Table):
        table = table.sort_by("id")
        self.ids = table.column("id").to_numpy()
        self.doc_ids = np.asarray(table.column("doc_id").to_pylist(), dtype=object)
        self.chunks = table.column("chunk").to_numpy()
        self.starts = table.column("start").to_numpy()
        self.ends = table.column("end").to_numpy()
        self.metadata_keys = [c for c in table.column_names if c not in CHUNK_COLUMNS]
        self._codes: dict[str, np.ndarray] = {}
        self._values: dict[str, dict[str, int]] = {}
        for key in self.metadata_keys:
            enc = table.column(key).combine_chunks().dictionary_encode()
            self._codes[key] = enc.indices.to_numpy(zero_copy_only=False)
            self._values[key] = {v: i for i, v in enumerate(enc.dictionary.to_pylist())}
        order = np.argsort(self.doc_ids, kind="stable")
        self._by_doc = order
        self._doc_sorted = self.doc_ids[order]

    @classmethod
    def load(cls, folder: Path) -> IdMap:
        return cls(pq.read_table(Path(folder) / IDS_FILE))

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (ids must be in the map)."""
        rows = np.searchsorted(self.ids, ids)
        assert np.all(self.ids[np.minimum(rows, len(self.ids) - 1)] == ids), "id not in map"
        return rows

    def ids_of_doc(self, doc_id: str) -> np.ndarray:
        """The ids of a document's chunks in chunk order; empty when the document is unknown."""
        lo = np.searchsorted(self._doc_sorted, doc_id, side="left")
        hi = np.searchsorted(self._doc_sorted, doc_id, side="right")
        rows = self._by_doc[lo:hi]
        return self.ids[rows[np.argsort(self.chunks[rows])]]

    def allowed_ids(self, filters: Filters | None) -> np.ndarray | None:
        """Ids whose metadata match every key (and, for a list of values, any of them);
        None when there is no filter, so the search can skip the selector entirely. Values are
        compared exactly, except a ``source`` (a file path), which ``path_matches``."""
        if not filters:
            return None
        mask = np.ones(len(self.ids), dtype=bool)
        for key, value in filters.items():
            if key not in self._values:
                known = ", ".join(self.metadata_keys) or "none (index.metadata is empty)"
                raise FilterError(f"unknown filter key {key!r}: this index can filter on {known}")
            values = [value] if isinstance(value, str) else list(value)
            if not all(isinstance(v, str) for v in values):
                raise FilterError(f"filter {key!r}: values must be strings, got {value!r}")
            codes = self._codes_of(key, values)
            mask &= np.isin(self._codes[key], np.asarray(codes, dtype=self._codes[key].dtype))
        return self.ids[mask]

    def _codes_of(self, key: str, values: list[str]) -> list[int]:
        known = self._values[key]
        if key not in PATH_KEYS:
            return [known[v] for v in values if v in known]
        # a few distinct files per index: comparing each with each value is cheap
        return [code for stored, code in known.items()
                if any(path_matches(stored, v) for v in values)]
