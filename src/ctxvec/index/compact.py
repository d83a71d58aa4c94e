"""Compact vectors, as vector databases offer them: search int8 or binary codes held in memory,
then rescore each query's best candidates exactly with the float vectors kept on disk.

``index.quantize``:

- ``int8``: FAISS ``IndexScalarQuantizer`` (``QT_8bit``, each component's range learnt from a
  sample): one byte a component, 4x smaller than float32; scores are inner products of the float
  query with the decoded codes.
- ``binary``: each component's sign, packed eight to a byte (``IndexBinaryFlat``): 32x smaller;
  candidates are the codes nearest the query's own sign bits in Hamming distance.

Either way the float vectors are written beside the codes (``vectors.npy``, row order) and
memory-mapped when the index is opened, so they cost disk, not RAM: a search reads only its
candidates' rows (``index.rescore`` of them per query, at least k), scores them exactly and keeps
the best k. The scores it answers are therefore exact cosines, and reconstruct gives the stored
vectors themselves. The codes are scanned whole (no IVF, no graph): memory is the point here, and
a scan has no recall lost to probing. Ids are kept as ``FaissIndex`` keeps them: the stable chunk
ids, one per row, answered through a sorted table.
"""

from __future__ import annotations

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
from ctxvec.index.faiss_index import EXACT_SUBSET_MAX
from ctxvec.index.faiss_lib import faiss
from ctxvec.workspace import read_json, write_json

if TYPE_CHECKING:
    from ctxvec.config import IndexConfig

CODES_FILE = "compact.faiss"
META_FILE = "compact.json"  # the marker: a folder holding it is a compact index
VECTORS_FILE = "vectors.npy"
ROW_IDS_FILE = "compact_ids.npy"

Quantize = Literal["int8", "binary"]
FACTORIES = {"int8": "SQ8", "binary": "BFlat"}  # what describe() and manifests call them


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """(N, D) floats -> (N, ceil(D/8)) uint8: bit j is set when component j is positive.
    Padding bits are 0 in every code, so they add nothing to a Hamming distance."""
    return np.packbits(np.asarray(vectors) > 0, axis=1)


class CompactIndex:
    """int8 or binary codes in memory, float vectors memory-mapped from disk (a
    ``VectorIndex``). Nothing changes after construction, so concurrent searches are safe."""

    def __init__(self, codes, quantize: Quantize, row_ids: np.ndarray, vectors: np.ndarray,
                 rescore: int):
        self.codes = codes  # faiss IndexScalarQuantizer or IndexBinaryFlat, rows 0..N-1
        self.quantize = quantize
        self.row_ids = row_ids  # (N,) int64: the id of each row
        self.vectors = vectors  # (N, D) float32, a read-only memory map once saved and opened
        self.rescore = int(rescore)
        self.build_device = "cpu"
        order = np.argsort(row_ids, kind="stable")
        self._sorted_ids, self._order = row_ids[order], order

    # --- build ---------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, quantize: Quantize,
              rescore: int = 100, train_size: int = 100_000) -> CompactIndex:
        """vectors (N, D) float32 (L2-normalised), ids (N,) int64 -> codes over every row."""
        if quantize not in FACTORIES:
            raise UserInputError(f"index.quantize must be none, int8 or binary, not {quantize!r}")
        vectors, ids = check_vectors(vectors, ids)
        dim = vectors.shape[1]
        if quantize == "int8":
            codes = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit,
                                               faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)  # the seeded sample FaissIndex trains on
            n_train = min(len(vectors), train_size)
            codes.train(vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))])
            codes.add(vectors)
        else:
            codes = faiss.IndexBinaryFlat(8 * ((dim + 7) // 8))
            codes.add(binary_codes(vectors))
        return cls(codes, quantize, ids, vectors, rescore)

    @classmethod
    def from_config(cls, vectors: np.ndarray, ids: np.ndarray, cfg: IndexConfig) -> CompactIndex:
        return cls.build(vectors, ids, cfg.quantize, cfg.rescore, cfg.train_sample)

    @property
    def count(self) -> int:
        return len(self.row_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def memory_bytes(self) -> int:
        """Bytes this index holds in RAM: the codes and the id tables (the float vectors are a
        memory map, read per query, once opened from disk)."""
        code_bytes = self.count * int(self.codes.code_size)
        ids_bytes = self.row_ids.nbytes + self._sorted_ids.nbytes + self._order.nbytes
        held = 0 if isinstance(self.vectors, np.memmap) else self.vectors.nbytes
        return code_bytes + ids_bytes + held

    # --- tunables, description, ids ---------------------------------------------------------

    def params(self) -> dict[str, int]:
        return {"rescore": self.rescore}

    def set_params(self, **values: int) -> None:
        """``rescore``: candidates rescored per query; other names are ignored."""
        if values.get("rescore") is not None:
            self.rescore = max(1, int(values["rescore"]))

    def describe(self) -> dict[str, str]:
        return {"backend": "faiss", "factory": FACTORIES[self.quantize],
                "family": f"compact-{self.quantize}", "build_device": self.build_device,
                "device": "cpu (faiss, rescored from disk)"}

    def live_ids(self) -> np.ndarray:
        return self._sorted_ids

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return sorted_contains(self._sorted_ids, ids)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (all of them stored)."""
        return self._order[np.searchsorted(self._sorted_ids, ids)]

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The float vectors of ``ids``, as stored (not their codes)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        missing = ids[~self.contains(ids)]
        if len(missing):
            raise KeyError(f"id {missing[0]} is not in the index")
        return np.asarray(self.vectors[self._rows(ids)], dtype=np.float32)

    def to_gpus(self) -> bool:
        return False  # the codes stay on the CPU; serve_on may copy the float vectors to a GPU

    # --- search ---------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Codes give max(rescore, k) candidates a query; their float vectors rank them."""
        queries = check_queries(queries, self.dim)
        k = max(1, min(k, self.count))
        params = None
        if allowed_ids is not None:
            allowed = np.asarray(allowed_ids, dtype=np.int64)
            allowed = allowed[self.contains(allowed)]
            if len(allowed) <= EXACT_SUBSET_MAX:  # score exactly those vectors
                return topk_inner_product(queries, self.reconstruct(allowed), allowed, k)
            bits = np.zeros(self.count, dtype=bool)
            bits[self._rows(allowed)] = True
            bitmap = np.packbits(bits, bitorder="little")  # referenced until the search ends
            sel = faiss.IDSelectorBitmap(self.count, faiss.swig_ptr(bitmap))
            params = faiss.SearchParameters(sel=sel)
        take = min(self.count, max(k, self.rescore))
        coded = binary_codes(queries) if self.quantize == "binary" else queries
        rows = self.codes.search(coded, take, params=params)[1]
        return self._rescore(queries, rows, k)

    def _rescore(self, queries: np.ndarray, rows: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products of each query with its candidate rows (Q, C; -1: none) -> top k.
        The rows of the whole batch are read once, in file order."""
        valid = rows >= 0
        unique = np.unique(rows[valid])
        scores = np.full(rows.shape, -np.inf, dtype=np.float32)
        if len(unique):
            block = np.asarray(self.vectors[unique], dtype=np.float32)  # (U, D) from disk
            pos = np.searchsorted(unique, np.where(valid, rows, unique[0]))
            all_scores = queries @ block.T  # (Q, U)
            scores = np.where(valid, np.take_along_axis(all_scores, pos, axis=1), -np.inf)
        take = min(k, rows.shape[1])
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1),
                                                 axis=1, kind="stable"), axis=1)
        out_scores = np.take_along_axis(scores, top, axis=1).astype(np.float32)
        out_rows = np.take_along_axis(rows, top, axis=1)
        ids = np.where(out_rows >= 0, self.row_ids[np.maximum(out_rows, 0)], -1)
        ids[~np.isfinite(out_scores)] = -1
        if take < k:  # fewer candidates than k (k is capped at count, so only with filters)
            pad = k - take
            out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return out_scores, ids.astype(np.int64)

    # --- save, load ---------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Codes, row ids, float vectors, then ``compact.json`` (the marker), each atomically."""
        folder = Path(folder)
        write = faiss.write_index if self.quantize == "int8" else faiss.write_index_binary
        atomic_file(folder / CODES_FILE, lambda p: write(self.codes, str(p)))
        atomic_file(folder / ROW_IDS_FILE, lambda p: np.save(p, self.row_ids))
        atomic_file(folder / VECTORS_FILE,
                    lambda p: np.save(p, np.ascontiguousarray(self.vectors, dtype=np.float32)))
        write_json(folder / META_FILE, {"quantize": self.quantize, "rescore": self.rescore,
                                        "count": self.count, "dim": self.dim})

    @classmethod
    def load(cls, folder: Path, factory: str | None = None, mmap: bool = False) -> CompactIndex:
        """The float vectors are always memory-mapped; ``mmap`` maps the codes too."""
        folder = Path(folder)
        meta = read_json(folder / META_FILE)
        quantize = meta["quantize"]
        flags = (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY) if mmap else 0
        read = faiss.read_index if quantize == "int8" else faiss.read_index_binary
        codes = read(str(folder / CODES_FILE), flags)
        row_ids = np.load(folder / ROW_IDS_FILE)
        vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
        if len(row_ids) != codes.ntotal or len(vectors) != codes.ntotal:
            raise UserInputError(f"{folder}: the compact index's codes ({codes.ntotal}), ids "
                                 f"({len(row_ids)}) and vectors ({len(vectors)}) disagree: "
                                 "rebuild the index")
        return cls(codes, quantize, row_ids, vectors, int(meta.get("rescore", 100)))
