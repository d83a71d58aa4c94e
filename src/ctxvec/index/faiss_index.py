"""The FAISS backend: build from a factory string (or choose one by size), search with metadata
filters, save atomically, load memory-mapped.

Vectors are L2-normalised, so inner product is cosine similarity. Ids are the stable int64 chunk
ids of ``ctxvec.index.id_map``; the folder's ``ids.parquet`` maps them back to documents.

How each family keeps ids: Flat and HNSW keep no ids of their own, so they are wrapped in
``IndexIDMap2`` (ids, and reconstruct by id); IVF keeps ids in its inverted lists and gets a
hashtable direct map, so that it can reconstruct by arbitrary id. An index is built once and not
changed afterwards (``ctxvec.index.base``): every model version gets a fresh one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ctxvec.errors import UserInputError
from ctxvec.index.base import (
    atomic_file,
    check_queries,
    check_vectors,
    sorted_contains,
    topk_inner_product,
)
from ctxvec.index.faiss_lib import faiss
from ctxvec.index.gpu_build import build_on_gpu, resolve_build_device
from ctxvec.workspace import read_json, write_json

if TYPE_CHECKING:
    from ctxvec.config import IndexConfig

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INDEX_META_FILE = "index.json"
REMOVED_FILE = "removed.npy"  # tombstones an older ctxvec could save; refused on load
# A filter allowing at most this many ids is answered by exact search over exactly those vectors:
# an approximate index searched through a very selective selector visits too few of them (IVF
# probes lists that hold none, HNSW walks a graph whose allowed nodes are few) and returns fewer
# than k hits. Scoring 10,000 vectors exactly costs about what an IVF search costs that probes
# 32 of 4,096 lists over 1M vectors (about 7,800 vectors scanned).
EXACT_SUBSET_MAX = 10_000
MIN_POINTS_PER_CENTROID = 39  # faiss' own lower bound for k-means training

Family = Literal["flat", "ivf", "hnsw", "other"]


def choose_factory(n: int, dim: int, cfg: IndexConfig, memory_bytes: int | None = None) -> str:
    """The factory string ``index.factory: auto`` stands for, from the collection's size.

    The rule:
    - up to ``cfg.auto_exact_max`` vectors (10k by default): ``Flat``: recall is 1 and there
      is nothing to train. Past that, exact search is what a server spends its time on: at 30k
      real MiniLM vectors a batch of 32 queries cost 12-45x what ``IVF512,Flat`` at nprobe 32
      cost (recall@10 0.98), and under 32 clients the batching thread spent 72% of its time in
      it. (It was 100k until then.)
    - above: ``IVF{nlist},Flat``, with nlist the largest power of two at most 4·sqrt(n) and at
      most the training sample / 39 (faiss' minimum of points per centroid). IVF rather than
      HNSW because it builds an order of magnitude faster (k-means on a sample, then one
      assignment pass; HNSW inserts every vector into a graph) and reaches recall@10 >= 0.95
      with a modest nprobe (docs/benchmarks.md). HNSW stays one factory string away
      (``index.factory: HNSW32``).
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
    """A FAISS index with explicit int64 ids, inner-product metric (a ``VectorIndex``).

    Searching is safe from several threads at once: nothing shared changes during a search
    (filtered searches build their own parameters).

    For Flat and HNSW the id map's own search is bypassed: ctxvec searches the wrapped index by
    row and turns rows into ids with numpy. ``IndexIDMap.search`` opens an OpenMP parallel region
    for those few labels on every call, which on a busy machine cost more than the HNSW search
    itself (71 against 4,400 single queries/s on 2 shared cores).
    """

    def __init__(self, index: faiss.Index, factory: str):
        self.factory = factory
        self._gpu: faiss.Index | None = None
        self.build_device = "unknown"  # cpu or cuda when built here (see ``build``)
        self.index = index
        self.family = _family(index)
        self._wrapped = isinstance(index, faiss.IndexIDMap)  # Flat, HNSW: rows inside, ids here
        self._base = faiss.downcast_index(index.index) if self._wrapped else index
        self._live: np.ndarray | None = None  # sorted ids, computed on first use
        self._rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # see _row_table

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
        vectors, ids = check_vectors(vectors, ids)
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
        out.set_params(nprobe=nprobe, ef_search=ef_search)
        out.build_device = device
        return out

    @classmethod
    def from_config(cls, vectors: np.ndarray, ids: np.ndarray, cfg: IndexConfig) -> FaissIndex:
        """The index ``cfg`` (the recipe's ``index`` section) asks for, ``auto`` resolved for
        this many vectors."""
        factory = resolve_factory(cfg.factory, len(vectors), np.shape(vectors)[1], cfg)
        return cls.build(vectors, ids, factory, train_size=cfg.train_sample, nprobe=cfg.nprobe,
                         ef_search=cfg.ef_search, build_device=cfg.build_device)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    # --- tunables, description ------------------------------------------------------------

    @property
    def nprobe(self) -> int | None:
        """IVF lists probed per query (None for other families); stored in the index file."""
        ivf = faiss.try_extract_index_ivf(self.index)
        return int(ivf.nprobe) if ivf is not None else None

    @property
    def ef_search(self) -> int | None:
        """HNSW candidate list size (None for other families); stored in the index file."""
        hnsw = _hnsw(self.index)
        return int(hnsw.hnsw.efSearch) if hnsw is not None else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.set_params(nprobe=value)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self.set_params(ef_search=value)

    def params(self) -> dict[str, int]:
        values = {"nprobe": self.nprobe, "ef_search": self.ef_search}
        return {k: v for k, v in values.items() if v is not None}

    def set_params(self, **values: int) -> None:
        """``nprobe`` (IVF; capped at the number of lists) and ``ef_search`` (HNSW)."""
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None and values.get("nprobe") is not None:
            ivf.nprobe = min(int(values["nprobe"]), int(ivf.nlist))
        hnsw = _hnsw(self.index)
        if hnsw is not None and values.get("ef_search") is not None:
            hnsw.hnsw.efSearch = int(values["ef_search"])

    def describe(self) -> dict[str, str]:
        return {"backend": "faiss", "factory": self.factory, "family": self.family,
                "build_device": self.build_device,
                "device": "cuda (faiss)" if self.on_gpu else "cpu (faiss)"}

    # --- ids ------------------------------------------------------------------------------

    def live_ids(self) -> np.ndarray:
        """Every id the index answers with, sorted."""
        if self._live is None:
            self._live = self._row_table()[1] if self._wrapped else np.sort(_ivf_ids(self.index))
        return self._live

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask: which of ``ids`` are in the index."""
        return sorted_contains(self.live_ids(), ids)

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
        queries = check_queries(queries, self.dim)
        k = max(1, min(k, self.count))
        if allowed_ids is None:
            if self._gpu is not None:
                return self._gpu.search(queries, k)
            # nprobe and efSearch are the index's own (set at build, stored in the file)
            return self._translate(*self._base.search(queries, k))
        allowed = np.asarray(allowed_ids, dtype=np.int64)
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
        """Write the index and its factory string into ``folder``, each file atomically."""
        folder = Path(folder)
        atomic_file(folder / INDEX_FILE, lambda p: faiss.write_index(self.index, str(p)))
        # "removed": 0 keeps index.json as earlier versions, which had tombstones, wrote it
        write_json(folder / INDEX_META_FILE, {"factory": self.factory, "removed": 0})

    @classmethod
    def load(cls, folder: Path, factory: str | None = None, mmap: bool = False) -> FaissIndex:
        """Read an index folder; ``mmap`` maps the file instead of reading it into memory.

        ``IO_FLAG_MMAP_IFC`` maps Flat, HNSW and IVF data alike (the older ``IO_FLAG_MMAP``
        maps only IVF lists: a 300 MB Flat index still cost 300 MB of RAM with it).
        """
        folder = Path(folder)
        if (folder / REMOVED_FILE).is_file():
            raise UserInputError(f"{folder} holds {REMOVED_FILE}, tombstones that this version "
                                 "no longer applies: rebuild the index (ctxvec embed / run)")
        flags = 0
        if mmap:
            flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY
        index = faiss.read_index(str(folder / INDEX_FILE), flags)
        meta_file = folder / INDEX_META_FILE
        saved = read_json(meta_file) if meta_file.is_file() else {}
        return cls(index, factory or saved.get("factory", "unknown"))


# --- helpers --------------------------------------------------------------------------------


def _new_index(dim: int, factory: str) -> faiss.Index:
    try:
        base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise UserInputError(
            f"invalid FAISS factory string (index.factory) {factory!r}: {e}"
        ) from None
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        # A hashtable direct map lets IVF reconstruct by any id (an array map would need ids
        # 0..n-1).
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
    """Every id stored in an IVF index's inverted lists."""
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

