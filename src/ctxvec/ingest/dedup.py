"""The de-duplication pass of an ingest: document by document in file order, what is kept.

A document is dropped when its text is already in the corpus (exact duplicate), when its id was
already kept by this ingest with other text (quarantined), or when a kept document is a
near-duplicate of it (MinHash Jaccard at or above the threshold, found through LSH bands).
Otherwise it is kept, and later documents are compared with it: the result depends on the order,
and only on the order.

What is known lives on disk (``DedupState``); the merger takes a batch of documents at a time:
one look-up per table for the whole batch, then the ordered decisions, each checked against the
state on disk and against the documents kept earlier in the same batch, then one write.
"""

from __future__ import annotations

import json
from typing import IO

import numpy as np
import pyarrow as pa

from ctxvec.ingest.dedup_state import DedupState
from ctxvec.ingest.near_dup import LshBands, best_match


class _Batch:
    """What a batch has kept so far, not yet written to the state: the look-ups of the documents
    after it in the same batch must see it."""

    def __init__(self) -> None:
        self.hashes: dict[str, str] = {}  # content hash -> doc id
        self.ids: dict[str, int | None] = {}  # doc id -> row of its new signature, if any
        self.indexed: dict[int, tuple[str, np.ndarray, list[int]]] = {}  # row -> id, sig, keys
        self.buckets: dict[tuple[int, int], list[int]] = {}  # (band, key) -> rows

    def __len__(self) -> int:
        return len(self.hashes) + len(self.ids) + len(self.indexed) + len(self.buckets)


class Merger:
    """Decides, batch by batch in file order, which documents are kept; counts and records the
    others in ``rejected_file``. ``bands`` None: no near-duplicate detection."""

    def __init__(self, state: DedupState, bands: LshBands | None, threshold: float,
                 max_docs: int | None, counts: dict, reasons: dict, rejected_file: IO[str]):
        self.state, self.bands, self.threshold = state, bands, threshold
        self.max_docs = max_docs
        self.counts, self.reasons, self.rej = counts, reasons, rejected_file
        self.full = False
        self._batch = _Batch()

    def resident_entries(self) -> int:
        """Entries the merger holds in memory: none between batches, whatever the corpus size."""
        return len(self._batch)

    def _reject(self, source: str, line: int, doc_id: str, kind: str, reason: str) -> None:
        self.counts[kind + "s" if kind.endswith("duplicate") else kind] += 1
        self.reasons[kind] = self.reasons.get(kind, 0) + 1
        self.rej.write(json.dumps({"source": source, "line": line, "doc_id": doc_id,
                                   "kind": kind, "reason": reason}, ensure_ascii=False) + "\n")

    def decide(self, batch: pa.RecordBatch) -> tuple[list[bool], int]:
        """-> (keep mask, rows examined); fewer examined than rows once max_docs is reached."""
        ids = batch.column("doc_id").to_pylist()
        hashes = batch.column("content_hash").to_pylist()
        sources = batch.column("source").to_pylist()
        lines = batch.column("line").to_pylist()
        sigs = keys = None
        if self.bands is not None:
            col = batch.column("minhash")
            sigs = col.values.to_numpy().reshape(len(col), -1)  # (N, num_perm)
            keys = self.bands.keys(sigs).tolist()  # (N, b) Python ints
        # what the state knows of this batch's documents, one query per table
        owners = self.state.hash_owners(hashes)
        known = self.state.known_ids(ids)
        buckets = self.state.buckets(keys) if keys is not None else {}
        stored = self.state.signatures({r for rows in buckets.values() for r in rows})
        new = self._batch
        keep = [False] * len(ids)
        examined = len(ids)
        for i, (d, h) in enumerate(zip(ids, hashes, strict=True)):
            if self.full:
                examined = i
                break
            if h in owners or h in new.hashes:
                self._reject(sources[i], lines[i], d, "duplicate",
                             f"same text as {owners[h] if h in owners else new.hashes[h]}")
                continue
            kept_before, indexed = known.get(d, (False, False))
            if kept_before or d in new.ids:
                self._reject(sources[i], lines[i], d, "quarantined",
                             "duplicate doc_id with different text")
                continue
            row = None
            if sigs is not None and keys is not None:
                match = self._near(sigs[i], keys[i], d, buckets, stored)
                if match is not None:
                    self._reject(sources[i], lines[i], d, "near_duplicate",
                                 f"near-duplicate of {match[0]} (jaccard {match[1]:.2f})")
                    continue
                if not indexed:  # an update keeps its first version's signature in the index
                    row = self._index(d, sigs[i], keys[i])
            new.hashes[h] = d
            new.ids[d] = row
            keep[i] = True
            self.counts["kept"] += 1
            if self.max_docs and self.counts["kept"] >= self.max_docs:
                self.full = True
        self.state.add_kept(new.hashes, new.ids, new.indexed)
        self._batch = _Batch()
        return keep, examined

    def _near(self, sig: np.ndarray, keys: list[int], doc_id: str,
              buckets: dict[tuple[int, int], list[int]],
              stored: dict[int, tuple[str, np.ndarray]]) -> tuple[str, float] | None:
        """The best near-duplicate among the documents sharing a band with this one, on disk
        or kept earlier in this batch."""
        new = self._batch
        rows: set[int] = set()
        for j, k in enumerate(keys):
            rows.update(buckets.get((j, k), ()))
            rows.update(new.buckets.get((j, k), ()))
        if not rows:
            return None
        cands = [(r, *(stored[r] if r in stored else new.indexed[r][:2])) for r in rows]
        return best_match(sig, cands, self.threshold, doc_id)

    def _index(self, doc_id: str, sig: np.ndarray, keys: list[int]) -> int:
        row = self.state.next_row
        self.state.next_row += 1
        self._batch.indexed[row] = (doc_id, sig, keys)
        for j, k in enumerate(keys):
            self._batch.buckets.setdefault((j, k), []).append(row)
        return row
