"""Sharded indexes (``index.shards`` > 1): one index per corpus shard, searched together.

Why shards: an index past one machine's memory (or past what one IVF trains well) is split into
indexes that are built, stored and, later, placed independently; a query goes to every shard and
the top-k lists are merged by score, which for exact shards is exactly the top-k of one index
over all vectors (per shard the k best, so the k best overall are among them).

How rows are split: by a stable hash of ``doc_id`` (``blake2b``, personalised so it is not the
chunk-id hash), modulo the number of shards. By document, not by embeddings Parquet file,
because (1) every chunk of a document lands in the same shard, so a document is removed,
replaced or looked up (``search_id``) in one place, (2) a document keeps its shard across corpus
versions, whatever file it was embedded into, and (3) shards come out about the same size
whatever the file sizes. Chunk ids (``ctxvec.index.id_map``) are already unique across the whole
corpus and are kept as they are, so ids never collide across shards and ``ids.parquet``, BM25
and filters stay whole-corpus structures beside the shards.

On disk, inside the index folder: ``shards/<k>/`` holds shard k exactly as a single index folder
holds its index (for FAISS: ``index.faiss``, ``index.json``), in the backend ``index.backend``
names; ``shards.json`` lists every shard's factory and count. The top-level manifest
(``run_index``) lists the shards with their count, factory and own recall, and the recall@10 of
the merged index.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ctxvec.errors import UserInputError
from ctxvec.index.base import VectorIndex, check_queries
from ctxvec.index.recall import recall_at_k
from ctxvec.workspace import read_json, write_json

if TYPE_CHECKING:
    from ctxvec.config import IndexConfig

SHARDS_DIR = "shards"
SHARDS_FILE = "shards.json"
_PERSON = b"ctxvec-shard"  # blake2b personalisation: another hash than the chunk ids'


def shard_of(doc_ids: Sequence[str], shards: int) -> np.ndarray:
    """The shard (0..shards-1) of each document: stable across machines, runs and versions."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8, person=_PERSON).digest(),
                        "big") % shards for d in doc_ids),
        dtype=np.int64, count=len(doc_ids))


class ShardedIndex:
    """Several indexes of one backend behind one ``VectorIndex``.

    Searches run on all shards in parallel threads (faiss and torch release the GIL) and merge
    by score; like every ``VectorIndex``, it is safe to search from several threads at once.
    """

    def __init__(self, shards: Sequence[VectorIndex]):
        if not shards:
            raise ValueError("a sharded index needs at least one shard")
        dims = {s.dim for s in shards}
        if len(dims) != 1:
            raise ValueError(f"shards of different dimensions {sorted(dims)}")
        self.shards = list(shards)
        self._pool = ThreadPoolExecutor(max_workers=min(len(self.shards), os.cpu_count() or 1),
                                        thread_name_prefix="ctxvec-shard")
        self._live: np.ndarray | None = None

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    def params(self) -> dict[str, int]:
        """Each tunable as the first shard that has it holds it (all are built with one
        config, so they agree unless ``auto`` chose different families)."""
        out: dict[str, int] = {}
        for s in self.shards:
            out = s.params() | out
        return out

    def set_params(self, **values: int) -> None:
        for s in self.shards:
            s.set_params(**values)

    def describe(self) -> dict[str, str]:
        """Each shard's description, a value that differs between shards joined by `` | ``
        (``auto`` chooses each shard's factory for its own size)."""
        parts = [s.describe() for s in self.shards]
        out = {key: " | ".join(dict.fromkeys(p[key] for p in parts)) for key in parts[0]}
        out["backend"] = f"sharded {out['backend']}"
        return out

    def to_gpus(self) -> bool:
        """Every shard on the GPUs its backend can use; False if any stays on the CPU."""
        return all([s.to_gpus() for s in self.shards])  # a list: try every shard

    def live_ids(self) -> np.ndarray:
        if self._live is None:
            self._live = np.sort(np.concatenate([s.live_ids() for s in self.shards]))
        return self._live

    def contains(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        found = np.zeros(ids.shape, dtype=bool)
        for s in self.shards:
            found |= s.contains(ids)
        return found

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (N, D), each read from the shard that holds it."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        for s in self.shards:
            mine = s.contains(ids) & ~found
            if mine.any():
                out[mine] = s.reconstruct(ids[mine])
                found |= mine
        if not found.all():
            raise KeyError(f"id {ids[~found][0]} is not in the index")
        return out

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) -> (scores (Q, k), ids (Q, k)) over every shard, best first; missing
        slots have id -1."""
        queries = check_queries(queries, self.dim)
        k = max(1, min(k, self.count))
        jobs = []
        for s in self.shards:
            allowed = None
            if allowed_ids is not None:
                allowed = np.asarray(allowed_ids, dtype=np.int64)
                allowed = allowed[s.contains(allowed)]
                if len(allowed) == 0:
                    continue  # nothing this shard holds may be returned
            if s.count:
                jobs.append(self._pool.submit(s.search, queries, k, allowed))
        parts = [j.result() for j in jobs]
        if not parts:
            return (np.full((len(queries), k), -np.finfo(np.float32).max, np.float32),
                    np.full((len(queries), k), -1, np.int64))
        return merge_topk([p[0] for p in parts], [p[1] for p in parts], k)

    # --- save, load ---------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Shard k into ``folder/shards/<k>/`` and the list of shards into ``shards.json``;
        made atomic as a whole by saving into ``Workspace.stage_dir``, as ``run_index`` does."""
        folder = Path(folder)
        for k, s in enumerate(self.shards):
            sub = folder / SHARDS_DIR / str(k)
            sub.mkdir(parents=True, exist_ok=True)
            s.save(sub)
        write_json(folder / SHARDS_FILE, {
            "shards": len(self.shards), "scheme": "blake2b(doc_id) mod shards",
            "factories": [s.describe()["factory"] for s in self.shards],
            "counts": [s.count for s in self.shards]})

    @classmethod
    def load(cls, folder: Path, open_shard: Callable[[Path, str | None], VectorIndex]
             ) -> ShardedIndex:
        """Read a folder ``save`` wrote; ``open_shard(shard folder, its factory)`` reads each
        shard (``factory.open_index`` picks the backend from the files it finds)."""
        folder = Path(folder)
        meta = read_json(folder / SHARDS_FILE)
        shards = []
        for k in range(int(meta["shards"])):
            sub = folder / SHARDS_DIR / str(k)
            if not sub.is_dir():
                raise FileNotFoundError(f"{folder} lists {meta['shards']} shards, but shard {k} "
                                        "has no folder")
            shards.append(open_shard(sub, meta["factories"][k]))
        return cls(shards)


def merge_topk(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray],
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-shard top lists (each (Q, k_i), best first) -> the overall top k (Q, k) by score;
    empty slots (id -1) go last, and stay -1 when there are fewer than k hits in all."""
    all_scores = np.concatenate(scores, axis=1)  # (Q, sum k_i)
    all_ids = np.concatenate(ids, axis=1)
    if all_scores.shape[1] < k:  # every shard smaller than k: pad with empty slots
        pad = k - all_scores.shape[1]
        all_scores = np.pad(all_scores, ((0, 0), (0, pad)),
                            constant_values=-np.finfo(np.float32).max)
        all_ids = np.pad(all_ids, ((0, 0), (0, pad)), constant_values=-1)
    rank_by = np.where(all_ids >= 0, all_scores, -np.inf)
    order = np.argsort(-rank_by, axis=1, kind="stable")[:, :k]  # ties: the lower shard first
    return (np.take_along_axis(all_scores, order, axis=1),
            np.take_along_axis(all_ids, order, axis=1))


def build_sharded(vectors: np.ndarray, ids: np.ndarray, doc_ids: Sequence[str],
                  cfg: IndexConfig, build_shard: Callable[[np.ndarray, np.ndarray], VectorIndex]
                  ) -> tuple[ShardedIndex, list[dict]]:
    """One index per shard of the rows (by ``shard_of`` their document), each built by
    ``build_shard(vectors, ids)`` (for FAISS: the factory ``cfg.factory`` resolves to for the
    shard's own size) -> (the sharded index, per shard: count, factory, build device, recall@10
    against exact search within the shard)."""
    n = cfg.shards
    assign = shard_of(doc_ids, n)
    shards, info = [], []
    for k in range(n):
        rows = np.flatnonzero(assign == k)
        if len(rows) == 0:
            raise UserInputError(f"index.shards={n}, but no document hashes to shard {k} (the "
                                 f"corpus has {len(set(doc_ids))} documents): use fewer shards")
        vecs, sids = vectors[rows], ids[rows]
        index = build_shard(vecs, sids)
        shards.append(index)
        described = index.describe()
        info.append({"shard": k, "count": index.count, "factory": described["factory"],
                     "build_device": described["build_device"],
                     "recall_at_10": recall_at_k(index, vecs, sids, cfg.recall_sample)})
    return ShardedIndex(shards), info
