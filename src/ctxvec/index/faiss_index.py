"""FAISS behind one small interface: build from a factory string (or choose one by size), add,
remove and upsert by id, search with metadata filters, save atomically, load memory-mapped.

Vectors are L2-normalised, so inner product is cosine similarity. Ids are the stable int64 chunk
ids of ``ctxvec.index.id_map``; the folder's ``ids.parquet`` maps them back to documents.

How each family keeps ids and deletes:
- Flat and HNSW keep no ids of their own: they are wrapped in ``IndexIDMap2`` (ids, and
  reconstruct by id). Flat removes for real.
- IVF keeps ids in its inverted lists and gets a hashtable direct map, so that it can both
  remove and reconstruct by arbitrary id.
- HNSW cannot remove a vector from its graph. ``remove`` marks the ids as tombstones, applied to
  every search through the id selector (so they are never returned) and saved beside the index;
  adding an id that is a tombstone rebuilds the graph from the live vectors first ("compact"),
  so that one id never has two vectors. An HNSW upsert therefore costs a rebuild.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import faiss
import numpy as np

from ctxvec.errors import UserInputError
from ctxvec.index.gpu_build import build_on_gpu, resolve_build_device
from ctxvec.workspace import read_json, write_json

if TYPE_CHECKING:
    from ctxvec.config import IndexConfig

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INDEX_META_FILE = "index.json"
REMOVED_FILE = "removed.npy"
# A filter allowing at most this many ids is answered by exact search over exactly those vectors:
# an approximate index searched through a very selective selector visits too few of them (IVF
# probes lists that hold none, HNSW walks a graph whose allowed nodes are few) and returns fewer
# than k hits. Scoring 10,000 vectors exactly costs about what an IVF search costs that probes
# 32 of 4,096 lists over 1M vectors (about 7,800 vectors scanned).
EXACT_SUBSET_MAX = 10_000
MIN_POINTS_PER_CENTROID = 39  # faiss' own lower bound for k-means training

Family = Literal["flat", "ivf", "hnsw", "other"]


class VectorIndex(Protocol):
    @property
    def count(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


def choose_factory(n: int, dim: int, cfg: IndexConfig, memory_bytes: int | None = None) -> str:
    """The factory string ``index.factory: auto`` stands for, from the collection's size.

    The rule:
    - up to ``cfg.auto_exact_max`` vectors: ``Flat``. Exact search over 100k vectors takes a few
      milliseconds a query, recall is 1, and there is nothing to train.
    - above: ``IVF{nlist},Flat``, with nlist the largest power of two at most 4·sqrt(n) and at
      most the training sample / 39 (faiss' minimum of points per centroid). IVF rather than
      HNSW because it builds an order of magnitude faster (k-means on a sample, then one
      assignment pass; HNSW inserts every vector into a graph), removes vectors for real, and
      reaches recall@10 >= 0.95 with a modest nprobe (docs/benchmarks.md). HNSW stays one
      factory string away (``index.factory: HNSW32``).
    - when n float32 vectors would not fit ``memory_bytes`` (default: half the machine's
      memory): ``IVF{nlist},PQ{m}``, m = the largest divisor of dim up to dim/4 (4 dims per
      byte: 16x smaller than float32).
    """
    if n <= cfg.auto_exact_max:
        return "Flat"
    train = min(n, cfg.train_sample)
    limit = min(4 * np.sqrt(n), train / MIN_POINTS_PER_CENTROID)
    nlist = 1 << max(0, int(np.floor(np.log2(max(limit, 1)))))
    budget = memory_bytes if memory_bytes is not None else _half_memory()
    if n * dim * 4 <= budget:
        return f"IVF{nlist},Flat"
    m = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
    return f"IVF{nlist},PQ{m}"


def resolve_factory(factory: str, n: int, dim: int, cfg: IndexConfig) -> str:
    return choose_factory(n, dim, cfg) if factory == "auto" else factory


def _half_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError):
        return 8 << 30


class FaissIndex:
    """A FAISS index with explicit int64 ids, inner-product metric.

    Searching is safe from several threads at once (nothing shared changes during a search:
    filtered searches build their own parameters); add, remove and upsert are not, and must not
    run while others search.

    For Flat and HNSW the id map's own search is bypassed: ctxvec searches the wrapped index by
    row and turns rows into ids with numpy. ``IndexIDMap.search`` opens an OpenMP parallel region
    for those few labels on every call, which on a busy machine cost more than the HNSW search
    itself (71 against 4,400 single queries/s on 2 shared cores).
    """

    def __init__(self, index: faiss.Index, factory: str, removed: np.ndarray | None = None,
                 read_only: bool = False):
        self.factory = factory
        self.read_only = read_only
        self._removed = np.unique(np.asarray(removed if removed is not None else [], np.int64))
        self._gpu: faiss.Index | None = None
        self.build_device = "unknown"  # cpu or cuda when built here (see ``build``)
        self._set_index(index)

    def _set_index(self, index: faiss.Index) -> None:
        self.index = index
        self.family = _family(index)
        self._wrapped = isinstance(index, faiss.IndexIDMap)  # Flat, HNSW: rows inside, ids here
        self._base = faiss.downcast_index(index.index) if self._wrapped else index
        self._changed()

    def _changed(self) -> None:
        """Forget what was derived from the stored ids (after add, remove or a rebuild)."""
        self._live: np.ndarray | None = None  # sorted live ids
        self._rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # see _row_table
        self._live_bits: np.ndarray | None = None  # live rows, for HNSW with tombstones

    # --- build ---------------------------------------------------------------------------

    @classmethod
    def build(
        cls, vectors: np.ndarray, ids: np.ndarray, factory: str = "Flat",
        train_size: int = 100_000, nprobe: int = 32, ef_search: int = 128,
        build_device: str = "cpu",
    ) -> FaissIndex:
        """vectors (N, D) float32, ids (N,) int64 -> a trained, filled index.

        ``build_device`` (``index.build_device``: auto, cpu, cuda): where an IVF index is
        trained and filled (``ctxvec.index.gpu_build``); ``.build_device`` says where it was.
        """
        vectors, ids = _as_arrays(vectors, ids)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate ids: every vector needs its own id")
        index = _new_index(vectors.shape[1], factory)
        device = resolve_build_device(build_device, index)
        if device == "cuda":
            index = build_on_gpu(index, vectors, ids,
                                 lambda gpu: _train(gpu, vectors, factory, train_size))
        else:
            if not index.is_trained:
                _train(index, vectors, factory, train_size)
            index.add_with_ids(vectors, ids)
        out = cls(index, factory)
        out.nprobe, out.ef_search = nprobe, ef_search
        out.build_device = device
        return out

    @property
    def count(self) -> int:
        return int(self.index.ntotal) - len(self._removed)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def nprobe(self) -> int | None:
        """IVF lists probed per query (None for other families); stored in the index file."""
        ivf = faiss.try_extract_index_ivf(self.index)
        return int(ivf.nprobe) if ivf is not None else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            ivf.nprobe = min(int(value), int(ivf.nlist))

    @property
    def ef_search(self) -> int | None:
        """HNSW candidate list size (None for other families); stored in the index file."""
        hnsw = _hnsw(self.index)
        return int(hnsw.hnsw.efSearch) if hnsw is not None else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        hnsw = _hnsw(self.index)
        if hnsw is not None:
            hnsw.hnsw.efSearch = int(value)

    # --- ids, add, remove, upsert -----------------------------------------------------------

    def live_ids(self) -> np.ndarray:
        """Every id the index answers with, sorted."""
        if self._live is None:
            stored = self._row_table()[1] if self._wrapped else np.sort(_ivf_ids(self.index))
            self._live = np.setdiff1d(stored, self._removed, assume_unique=True) \
                if len(self._removed) else stored
        return self._live

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask: which of ``ids`` are in the index (and not removed)."""
        ids = np.asarray(ids, dtype=np.int64)
        live = self.live_ids()
        if len(live) == 0:
            return np.zeros(ids.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(live, ids), len(live) - 1)  # binary search: O(m log n)
        return live[pos] == ids

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add new vectors; an id already in the index is refused (use ``upsert``)."""
        self._check_writable()
        vectors, ids = _as_arrays(vectors, ids)
        self._check_dim(vectors)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate ids in one add: every vector needs its own id")
        present = ids[self.contains(ids)]
        if len(present):
            raise ValueError(f"{len(present)} id(s) already in the index (e.g. {present[0]}): "
                             "use upsert to replace them")
        if self.family == "hnsw" and np.isin(ids, self._removed).any():
            self._compact()  # a tombstoned id's old vector is still in the graph
        self.index.add_with_ids(vectors, ids)
        self._changed()

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (unknown ones are ignored); returns how many were removed."""
        self._check_writable()
        present = np.unique(np.asarray(ids, dtype=np.int64))
        present = present[self.contains(present)]
        if len(present) == 0:
            return 0
        if self.family == "hnsw":
            self._removed = np.union1d(self._removed, present)
        else:
            removed = self.index.remove_ids(faiss.IDSelectorArray(present))
            assert removed == len(present), (removed, len(present))
        self._changed()
        return len(present)

    def upsert(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add or replace: after it, each id maps to its new vector exactly once."""
        vectors, ids = _as_arrays(vectors, ids)
        self._check_dim(vectors)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate ids in one upsert: every vector needs its own id")
        self.remove(ids)
        self.add(vectors, ids)

    def _compact(self) -> None:
        """Rebuild the index from its live vectors, dropping tombstones (HNSW only needs it)."""
        live = self.live_ids()
        vectors = self.reconstruct(live)
        log.info("index: rebuilding %s without %d removed vectors", self.factory,
                 len(self._removed))
        fresh = FaissIndex.build(vectors, live, self.factory, nprobe=self.nprobe or 1,
                                 ef_search=self.ef_search or 16)
        self._removed = fresh._removed
        self._set_index(fresh.index)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (N, D); for PQ indexes their compressed approximation."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        missing = ids[~self.contains(ids)]
        if len(missing):
            raise KeyError(f"id {missing[0]} is not in the index")
        return self._base.reconstruct_batch(self._labels(ids))

    # --- search ---------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) -> (scores (Q, k), ids (Q, k)), best first; missing slots have id -1.

        ``allowed_ids``: search only among these ids (a metadata filter); None: all of them.
        """
        queries = self._check_queries(queries)
        k = max(1, min(k, self.count))
        if allowed_ids is None and not len(self._removed):
            if self._gpu is not None:
                return self._gpu.search(queries, k)
            # nprobe and efSearch are the index's own (set at build, stored in the file)
            return self._translate(*self._base.search(queries, k))
        if allowed_ids is None:  # HNSW tombstones: every live row
            return self._search_rows(queries, k, self._live_bitmap())
        allowed = np.asarray(allowed_ids, dtype=np.int64)
        if len(self._removed):
            allowed = np.setdiff1d(allowed, self._removed)
        if self.family != "flat" and len(allowed) <= EXACT_SUBSET_MAX:
            return self._exact_subset(queries, allowed, k)
        if not self._wrapped:  # IVF: ids are 63-bit hashes, a set of them
            return self._search_with(queries, k, faiss.IDSelectorBatch(allowed))
        return self._search_rows(queries, k, self._bitmap(self._labels(allowed)))

    def _bitmap(self, rows: np.ndarray) -> np.ndarray:
        """Rows are 0..ntotal-1, so a filter is one bit per row: built in a few milliseconds
        even for millions, where a hash set of them (IDSelectorBatch) takes far longer."""
        bits = np.zeros(int(self.index.ntotal), dtype=bool)
        bits[rows] = True
        return np.packbits(bits, bitorder="little")  # faiss reads bit i of byte i >> 3

    def _live_bitmap(self) -> np.ndarray:
        if self._live_bits is None:
            self._live_bits = self._bitmap(self._labels(self.live_ids()))
        return self._live_bits

    def _search_rows(self, queries: np.ndarray, k: int,
                     bitmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # ``bitmap`` stays referenced here until faiss has finished reading it
        sel = faiss.IDSelectorBitmap(int(self.index.ntotal), faiss.swig_ptr(bitmap))
        return self._search_with(queries, k, sel)

    def _search_with(self, queries: np.ndarray, k: int, sel) -> tuple[np.ndarray, np.ndarray]:
        """Search through an id selector, with parameters made for this call alone."""
        if self.family == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe)
        elif self.family == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=self.ef_search)
        else:
            params = faiss.SearchParameters(sel=sel)
        return self._translate(*self._base.search(queries, k, params=params))

    def _exact_subset(
        self, queries: np.ndarray, allowed: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among a few allowed ids: score exactly those stored vectors."""
        allowed = allowed[self.contains(allowed)]
        return topk_inner_product(queries, self.reconstruct(allowed), allowed, k)

    def _row_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For an id-mapped index: (id of each row, the ids sorted, rows in that order)."""
        if self._rows is None:
            row_ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            order = np.argsort(row_ids)
            self._rows = (row_ids, row_ids[order], order)
        return self._rows

    def _labels(self, ids: np.ndarray) -> np.ndarray:
        """The labels the inner faiss index knows ``ids`` by: their rows when it is wrapped in an
        id map, the ids themselves otherwise (IVF); ids not stored are dropped."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self._wrapped:
            return ids
        _, sorted_ids, order = self._row_table()
        if len(sorted_ids) == 0:
            return np.zeros(0, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return order[pos[sorted_ids[pos] == ids]].astype(np.int64)

    def _translate(self, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inner labels (rows) -> ids; -1 (no result) stays -1."""
        if not self._wrapped:
            return scores, labels
        ids = self._row_table()[0][np.maximum(labels, 0)]
        ids[labels < 0] = -1
        return scores, ids

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise UserInputError(
                f"query dimension {queries.shape[1]} != index dimension {self.dim}"
            )
        return queries

    def _check_dim(self, vectors: np.ndarray) -> None:
        if vectors.shape[1] != self.dim:
            raise UserInputError(f"vector dimension {vectors.shape[1]} != index dimension "
                                 f"{self.dim}")

    def _check_writable(self) -> None:
        if self.read_only:
            raise RuntimeError("this index was loaded memory-mapped (read-only): load it with "
                               "mmap=False to change it")

    # --- devices, save, load ----------------------------------------------------------------

    @property
    def on_gpu(self) -> bool:
        return self._gpu is not None

    def to_gpus(self) -> bool:
        """Also keep a copy on every GPU faiss sees, for unfiltered searches; False if none.

        Filtered searches stay on the CPU copy: faiss' GPU indexes take no id selectors.
        """
        if faiss.get_num_gpus() == 0:
            return False
        try:
            self._gpu = faiss.index_cpu_to_all_gpus(self.index)
        except (RuntimeError, AttributeError) as e:  # e.g. HNSW has no GPU implementation
            log.warning("index: %s stays on the CPU (faiss GPU: %s)", self.factory, e)
            return False
        return True

    def save(self, folder: Path) -> None:
        """Write the index, its factory string and its tombstones into ``folder``.

        Each file is replaced atomically (temporary name, then rename); a whole index folder is
        made atomic by saving into ``Workspace.stage_dir``, as ``run_index`` does.
        """
        folder = Path(folder)
        _atomic_file(folder / INDEX_FILE, lambda p: faiss.write_index(self.index, str(p)))
        if len(self._removed):
            _atomic_file(folder / REMOVED_FILE, lambda p: np.save(p, self._removed))
        else:
            with contextlib.suppress(FileNotFoundError):
                (folder / REMOVED_FILE).unlink()
        write_json(folder / INDEX_META_FILE, {"factory": self.factory,
                                              "removed": len(self._removed)})

    @classmethod
    def load(cls, folder: Path, factory: str | None = None, mmap: bool = False) -> FaissIndex:
        """Read an index folder; ``mmap`` maps the file instead of reading it into memory.

        ``IO_FLAG_MMAP_IFC`` maps Flat, HNSW and IVF data alike (the older ``IO_FLAG_MMAP``
        maps only IVF lists: a 300 MB Flat index still cost 300 MB of RAM with it); the mapped
        index is read-only.
        """
        folder = Path(folder)
        flags = 0
        if mmap:
            flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY
        index = faiss.read_index(str(folder / INDEX_FILE), flags)
        meta_file = folder / INDEX_META_FILE
        saved = read_json(meta_file) if meta_file.is_file() else {}
        removed_file = folder / REMOVED_FILE
        removed = np.load(removed_file) if removed_file.is_file() else None
        return cls(index, factory or saved.get("factory", "unknown"), removed, read_only=mmap)


def on_device(index: FaissIndex, device: str = "auto") -> VectorIndex:
    """The index to search with on ``device`` (``index.device``: auto, cpu or cuda).

    faiss GPU indexes when faiss sees a GPU; otherwise, when torch does, exact search as a
    matmul on the GPU (``TorchExactIndex``); otherwise the CPU index. ``cuda`` with no GPU at all
    is an error, not a silent fall-back.
    """
    if device == "cpu":
        return index
    if index.to_gpus():
        return index
    import torch

    if torch.cuda.is_available():
        from ctxvec.index.torch_exact import TorchExactIndex

        return TorchExactIndex.from_index(index, "cuda")
    if device == "cuda":
        raise UserInputError("index.device=cuda, but neither faiss nor torch sees a GPU: "
                             "use index.device=auto or cpu")
    return index


# --- helpers --------------------------------------------------------------------------------


def _as_arrays(vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or ids.ndim != 1 or len(vectors) != len(ids):
        raise ValueError(f"vectors {vectors.shape} and ids {ids.shape} do not line up")
    return vectors, ids


def _new_index(dim: int, factory: str) -> faiss.Index:
    try:
        base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise UserInputError(
            f"invalid FAISS factory string (index.factory) {factory!r}: {e}"
        ) from None
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        # A hashtable direct map lets IVF reconstruct and remove by any id (an array map
        # would need ids 0..n-1).
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return base
    if isinstance(base, faiss.IndexIDMap):  # the factory string asked for its own id map
        return base
    return faiss.IndexIDMap2(base)


def _train(index: faiss.Index, vectors: np.ndarray, factory: str, train_size: int) -> None:
    n_train = min(len(vectors), train_size)
    rng = np.random.default_rng(0)
    sample = vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))]
    log.info("index: training %s on %d vectors", factory, n_train)
    try:
        index.train(sample)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1]
        raise UserInputError(f"cannot train index.factory={factory!r} on {n_train} vectors "
                             f"({first}): use fewer lists or 'auto'") from None


def _hnsw(index: faiss.Index):
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def _family(index: faiss.Index) -> Family:
    if faiss.try_extract_index_ivf(index) is not None:
        return "ivf"
    if _hnsw(index) is not None:
        return "hnsw"
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return "flat" if isinstance(inner, faiss.IndexFlat) else "other"


def _ivf_ids(index: faiss.Index) -> np.ndarray:
    """Every id stored in an IVF index's inverted lists (tombstones are not an IVF thing)."""
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    parts = []
    for lst in range(ivf.nlist):
        size = lists.list_size(lst)
        if size:
            ptr = lists.get_ids(lst)
            parts.append(faiss.rev_swig_ptr(ptr, size).copy())
            lists.release_ids(lst, ptr)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _atomic_file(path: Path, write: Callable[[Path], None]) -> None:
    # The temporary name keeps the suffix: np.save would otherwise append ".npy".
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def topk_inner_product(
    queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of queries (Q, D) over vectors (N, D) carrying ``ids``;
    padded with id -1 and score -inf when N < k."""
    q = len(queries)
    scores_out = np.full((q, k), -np.inf, dtype=np.float32)
    ids_out = np.full((q, k), -1, dtype=np.int64)
    if len(vectors) == 0:
        return scores_out, ids_out
    scores = queries @ vectors.T  # (Q, N)
    take = min(k, len(vectors))
    top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    scores_out[:, :take] = np.take_along_axis(top_scores, order, axis=1)
    ids_out[:, :take] = ids[np.take_along_axis(top, order, axis=1)]
    return scores_out, ids_out


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-k by inner product: the reference recall is measured against."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_at_k(index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, n: int, k: int = 10):
    """Recall@k of ``index`` against exact search, with ``n`` stored vectors as queries."""
    if len(vectors) == 0:
        return 1.0
    rng = np.random.default_rng(0)
    rows = rng.choice(len(vectors), min(n, len(vectors)), replace=False)
    queries = vectors[rows]
    k = min(k, len(vectors))
    truth = ids[exact_search(vectors, queries, k)]  # (Q, k) ids
    got = index.search(queries, k)[1]
    hits = sum(len(set(t) & set(g)) for t, g in zip(truth, got, strict=True))
    return hits / truth.size
