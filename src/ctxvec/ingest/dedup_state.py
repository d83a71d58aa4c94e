"""What de-duplication must remember, on disk: one SQLite file per ingest, so that the memory of an
ingest does not grow with the corpus.

The in-memory state it replaces grew by about 3 KB a kept document (datasketch's LSH tables, the
signatures, a dict of content hashes, a set of ids): 10 million documents would have needed
about 30 GB. Here the process holds one batch of look-ups at a time and SQLite a page cache of
``cache_mb``; the file grows instead, by about 1.5 KB a document (the 1 KB signature, five band
keys, the content hash and the id, with their B-tree indexes).

Tables (``row`` numbers signatures in the order they were indexed):

- ``exact(hash -> doc_id)``: content hashes of earlier snapshots and of the documents kept so far;
- ``doc(doc_id -> run, row)``: every id of the corpus; ``run`` = 1 once kept by this ingest (an id
  twice in one ingest is quarantined), ``row`` its signature if it has one in the index;
- ``sig(row -> doc_id, sig)``: the MinHash signatures of indexed documents (uint64 bytes);
- ``band(key, band, row)``: the LSH band keys, clustered by key for look-ups.

The file is scratch: it lives in the ingest's staging folder and is built afresh from the committed
snapshots by every ingest (``load_snapshot``), as the in-memory state was, so an interrupted
ingest leaves nothing to repair and no journal is kept. All look-ups of a batch of documents go to
SQLite in one query per table (``IN`` over the batch's keys), and each batch's inserts are
one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ctxvec.ingest.near_dup import LshBands

DEDUP_FILE = "dedup.sqlite"
_LOAD_BATCH = 10_000  # rows of an earlier snapshot read at a time
_IN_CHUNK = 5_000  # parameters of one IN (...) list; SQLite allows 32,766

_SCHEMA = """
CREATE TABLE exact (hash TEXT PRIMARY KEY, doc_id TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE doc (doc_id TEXT PRIMARY KEY, run INTEGER NOT NULL, row INTEGER) WITHOUT ROWID;
CREATE TABLE sig (row INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, sig BLOB NOT NULL);
CREATE TABLE band (key INTEGER NOT NULL, band INTEGER NOT NULL, row INTEGER NOT NULL,
                   PRIMARY KEY (key, band, row)) WITHOUT ROWID;
"""
_UPSERT_DOC = ("INSERT INTO doc VALUES (?, 1, ?) ON CONFLICT (doc_id) "
               "DO UPDATE SET run = 1, row = coalesce(doc.row, excluded.row)")


class DedupState:
    """The SQLite file of one ingest's de-duplication state. ``bands`` None: no near-duplicates."""

    def __init__(self, path: Path, bands: LshBands | None, cache_mb: int):
        self.path, self.bands = Path(path), bands
        self.path.unlink(missing_ok=True)  # scratch: never trust a file left by someone else
        self.db = sqlite3.connect(self.path, isolation_level=None)
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "locking_mode = EXCLUSIVE",
                       "temp_store = FILE", "mmap_size = 0", f"cache_size = {-1024 * cache_mb}"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(_SCHEMA)
        self.next_row = 0

    def __enter__(self) -> DedupState:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)

    # -- look-ups, one query per table for a whole batch ---------------------------------------

    def _select(self, sql: str, values: Iterable) -> list[tuple]:
        """``sql`` with ``IN ({})`` run over ``values``, bound as parameters (ids and hashes are
        compared byte for byte), a chunk at a time within SQLite's limit on parameters."""
        values, out = list(values), []
        for i in range(0, len(values), _IN_CHUNK):
            chunk = values[i:i + _IN_CHUNK]
            out += self.db.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return out

    def hash_owners(self, hashes: Sequence[str]) -> dict[str, str]:
        """content hash -> the doc id that has it, for the hashes already known."""
        return dict(self._select("SELECT hash, doc_id FROM exact "
                                 "WHERE hash IN ({})", set(hashes)))

    def known_ids(self, ids: Sequence[str]) -> dict[str, tuple[bool, bool]]:
        """doc id -> (kept by this ingest already, indexed for near-duplicates), if known."""
        rows = self._select("SELECT doc_id, run, row FROM doc "
                            "WHERE doc_id IN ({})", set(ids))
        return {d: (bool(run), row is not None) for d, run, row in rows}

    def buckets(self, keys: Sequence[Sequence[int]]) -> dict[tuple[int, int], list[int]]:
        """(band, key) -> rows indexed under it, for the band keys (N, b) of a batch."""
        wanted = {(j, k) for ks in keys for j, k in enumerate(ks)}
        out: dict[tuple[int, int], list[int]] = {}
        for key, band, row in self._select("SELECT key, band, row FROM band WHERE key IN ({})",
                                            {k for _, k in wanted}):
            if (band, key) in wanted:  # the same key in another band is not a match
                out.setdefault((band, key), []).append(row)
        return out

    def signatures(self, rows: Iterable[int]) -> dict[int, tuple[str, np.ndarray]]:
        """row -> (doc id, signature) of indexed documents."""
        got = self._select("SELECT row, doc_id, sig FROM sig "
                           "WHERE row IN ({})", set(rows))
        return {r: (d, np.frombuffer(s, dtype=np.uint64)) for r, d, s in got}

    # -- writes ---------------------------------------------------------------------------------

    def add_kept(self, hashes: dict[str, str], ids: dict[str, int | None],
                 indexed: dict[int, tuple[str, np.ndarray, Sequence[int]]]) -> None:
        """One batch's kept documents: ``hashes`` content hash -> id, ``ids`` id -> row of its
        new signature (None: not indexed now), ``indexed`` row -> (id, signature, band keys)."""
        with self.db:  # one transaction
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO exact VALUES (?, ?)", hashes.items())
            self.db.executemany(_UPSERT_DOC, ids.items())
            self._index(indexed)

    def _index(self, indexed: dict[int, tuple[str, np.ndarray, Sequence[int]]]) -> None:
        self.db.executemany("INSERT INTO sig VALUES (?, ?, ?)",
                            ((r, d, s.astype(np.uint64).tobytes())
                             for r, (d, s, _) in indexed.items()))
        self.db.executemany("INSERT INTO band VALUES (?, ?, ?)",
                            ((k, j, r) for r, (_, _, ks) in indexed.items()
                             for j, k in enumerate(ks)))

    def load_snapshot(self, snap: Path, with_signatures: bool) -> None:
        """Add an earlier snapshot, snapshots oldest first: its content hashes (a later snapshot's
        id wins for the same text), its ids, and with ``with_signatures`` the signatures of its
        documents not yet indexed (an id's first indexed version stays, as in the index before)."""
        with self.db:
            self.db.execute("BEGIN")
            for shard in sorted(snap.glob("docs-*.parquet")):
                for b in pq.ParquetFile(shard).iter_batches(_LOAD_BATCH,
                                                            columns=["doc_id", "content_hash"]):
                    self._load_docs(b.column("doc_id").to_pylist(),
                                    b.column("content_hash").to_pylist())
            mh = snap / "minhash.parquet"
            if with_signatures and self.bands is not None and mh.is_file():
                for b in pq.ParquetFile(mh).iter_batches(_LOAD_BATCH):
                    self._load_signatures(b.column("doc_id").to_pylist(), b.column("minhash"))

    def _load_docs(self, ids: list[str], hashes: list[str]) -> None:
        self.db.executemany("INSERT INTO exact VALUES (?, ?) "
                            "ON CONFLICT (hash) DO UPDATE SET doc_id = excluded.doc_id",
                            zip(hashes, ids, strict=True))
        self.db.executemany("INSERT OR IGNORE INTO doc VALUES (?, 0, NULL)", ((d,) for d in ids))

    def _load_signatures(self, ids: list[str], col) -> None:
        assert self.bands is not None
        sigs = col.values.to_numpy().reshape(len(col), -1)  # (N, num_perm)
        known = self.known_ids(ids)
        new = [i for i, d in enumerate(ids) if not known.get(d, (False, False))[1]]
        if not new:
            return
        keys = self.bands.keys(sigs[new]).tolist()
        indexed = {}
        for i, ks in zip(new, keys, strict=True):
            indexed[self.next_row] = (ids[i], sigs[i], ks)
            self.next_row += 1
        self.db.executemany("INSERT INTO doc VALUES (?, 0, ?) ON CONFLICT (doc_id) "
                            "DO UPDATE SET row = excluded.row",
                            ((d, r) for r, (d, _, _) in indexed.items()))
        self._index(indexed)

    # -- sizes ----------------------------------------------------------------------------------

    def corpus_docs(self) -> int:
        """Distinct ids in the corpus: earlier snapshots' and the documents kept so far."""
        return self.db.execute("SELECT count(*) FROM doc").fetchone()[0]

    def rows(self) -> dict[str, int]:
        return {t: self.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("exact", "doc", "sig", "band")}

    def cache_bytes(self) -> int:
        """The most the SQLite page cache may hold."""
        size = self.db.execute("PRAGMA cache_size").fetchone()[0]
        page = self.db.execute("PRAGMA page_size").fetchone()[0]
        return -size * 1024 if size < 0 else size * page
